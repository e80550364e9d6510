"""`volt explain FIELD`: a spec field's documentation, read from the JSON Schema's descriptions
(kubectl explain): its type, default, allowed values, and its own fields with one line each."""

from __future__ import annotations

import textwrap


class ExplainError(ValueError):
    """A field path the schema does not have: the one-line reason, with what is there instead."""


def _deref(schema: dict, node: dict) -> dict:
    """`node` with its $ref followed (the referring node's own keys win: its description)."""
    while isinstance(node, dict) and "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def fields(schema: dict, node: dict) -> dict[str, dict]:
    """The fields an object node allows, including those a conditional (if/then) adds."""
    node = _deref(schema, node)
    if node.get("type") == "array":
        return fields(schema, node.get("items", {}))
    out = {k: _deref(schema, v) for k, v in node.get("properties", {}).items() if isinstance(v, dict)}
    for branch in node.get("allOf", []):
        for k, v in branch.get("then", {}).get("properties", {}).items():
            if isinstance(v, dict):
                out.setdefault(k, _deref(schema, v))
    return out


def find(schema: dict, path: str) -> dict:
    """The schema node of a dotted field path (`spec.snapshots.triggers`; '' is the document)."""
    node = schema
    walked = []
    for part in [p for p in path.split(".") if p]:
        here = fields(schema, node)
        if part not in here:
            where = ".".join(walked) or "the document"
            raise ExplainError(f"{path!r}: {where} has no field {part!r} (it has: {', '.join(here) or 'none'})")
        node = here[part]
        walked.append(part)
    return _deref(schema, node)


def type_name(schema: dict, node: dict) -> str:
    node = _deref(schema, node)
    if node.get("type") == "array":
        return f"[]{type_name(schema, node.get('items', {}))}"
    if "enum" in node:
        return "string" if all(isinstance(v, str) for v in node["enum"]) else "enum"
    t = node.get("type")
    if isinstance(t, list):
        return "|".join(t)
    if t:
        return t
    if "oneOf" in node or "anyOf" in node:
        return "|".join(dict.fromkeys(type_name(schema, n) for n in node.get("oneOf", node.get("anyOf"))))
    return "object" if "properties" in node or "allOf" in node else "any"


def explain(schema: dict, path: str, width: int = 80) -> str:
    """kubectl explain's layout: FIELD, DESCRIPTION, then FIELDS with one line each."""
    node = find(schema, path)
    wrap = lambda text, indent: textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent)  # noqa: E731
    lines = [f"FIELD: {path or '(document)'} <{type_name(schema, node)}>", "", "DESCRIPTION:",
             wrap(node.get("description", "(no description)"), "  ")]
    facts = []
    if "enum" in node:
        facts.append("one of: " + ", ".join(str(v) for v in node["enum"]))
    if "default" in node:
        facts.append(f"default: {node['default']!r}" if not isinstance(node["default"], (list, dict))
                     else f"default: {node['default']}")
    if "pattern" in node:
        facts.append(f"pattern: {node['pattern']}")
    lines += [wrap(f, "  ") for f in facts]
    children = fields(schema, node)
    if children:
        required = set(_deref(schema, node.get("items", node) if node.get("type") == "array" else node)
                       .get("required", []))
        lines += ["", "FIELDS:" if node.get("type") != "array" else "FIELDS (of each item):"]
        for name, child in children.items():
            mark = " -required-" if name in required else ""
            lines.append(f"  {name} <{type_name(schema, child)}>{mark}")
            first = (child.get("description") or "").split(". ")[0].rstrip(".")
            if first:
                lines.append(wrap(first + ".", "    "))
    return "\n".join(lines)
