"""Stage 1: JSON Schema errors turned into short ``file:line:col: message`` lines.

jsonschema's own wording is kept where it is already clear (``0 is less than the minimum of 1``);
unknown fields, missing fields, wrong types and failed alternatives (oneOf) get our own wording,
and a schema may carry an ``errorMessage`` (the yaml-language-server convention) for patterns.
"""

from __future__ import annotations

import functools
import json
import re

from .errors import SpecError
from .source import Document, Path

TYPE_CHECKING = False
if TYPE_CHECKING:                  # annotations only: typing costs ~2 ms a command
    from typing import Any

TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number",
              "boolean": "true or false", "object": "a mapping", "array": "a list", "null": "null"}
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_OWN_WORDING = {"type", "required", "additionalProperties", "oneOf", "anyOf", "const", "enum"}


@functools.cache
def validator() -> Any:
    """The Draft 2020-12 validator for vm.schema.json; integers exclude bools and 1.0."""
    from jsonschema import Draft202012Validator, validators
    from .files import schema_text
    checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _c, x: isinstance(x, int) and not isinstance(x, bool))
    strict = validators.extend(Draft202012Validator, type_checker=checker)
    return strict(json.loads(schema_text()))


def dotted(path: Path) -> str:
    """``spec.snapshots.triggers[0].every``; odd keys in brackets: ``labels["a.b/c"]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += ("." if out else "") + part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def quote(text: str) -> str:
    """A string in double quotes with control characters escaped, never shortened (paths)."""
    return json.dumps(text, ensure_ascii=False)


def describe(value: Any) -> str:
    """A value as a user would recognise it in their YAML, shortened."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _where(path: Path) -> str:
    return dotted(path) or "document"


def _allowed_hint(key: str, allowed: list[str]) -> str:
    import difflib                     # here: only a spec with an unknown field needs it
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f' (did you mean "{close[0]}"?)'
    return f" (allowed: {', '.join(allowed)})" if allowed else ""


def _unknown_fields(doc: Document, error: Any, path: Path) -> list[SpecError]:
    schema, instance = error.schema, error.instance
    allowed = list(schema.get("properties", {}))
    patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
    out = []
    for key in instance:
        if key in allowed or any(p.search(key) for p in patterns):
            continue
        where = f"in {dotted(path)}" if path else "at the top level"
        out.append(SpecError(doc.file, *doc.key_at(path + (key,)),
                             f"unknown field {describe(key)} {where}{_allowed_hint(key, allowed)}"))
    return out


def _alternatives(doc: Document, error: Any, path: Path) -> list[SpecError]:
    """oneOf/anyOf: report the branch that matched the value's type, else say what was expected."""
    from jsonschema.exceptions import best_match
    wrong_type = {e.relative_schema_path[0] for e in error.context
                  if e.validator == "type" and not e.relative_path}
    relevant = [e for e in error.context if e.relative_schema_path[0] not in wrong_type]
    if relevant:
        return convert(doc, best_match(relevant))
    expected = error.schema.get("errorMessage")
    if not expected:
        types = [TYPE_WORDS.get(b.get("type"), str(b.get("type"))) for b in error.validator_value]
        expected = "expected " + " or ".join(types)
    return [SpecError(doc.file, *doc.at(path),
                      f"{_where(path)}: {expected}, got {describe(error.instance)}")]


def convert(doc: Document, error: Any) -> list[SpecError]:
    """One jsonschema ValidationError as SpecErrors positioned in `doc`."""
    path: Path = tuple(error.absolute_path)
    where = _where(path)
    pos = doc.at(path)
    kind = error.validator
    custom = error.schema.get("errorMessage") if isinstance(error.schema, dict) else None
    if "propertyNames" in error.absolute_schema_path:
        key = error.instance
        text = custom or error.message
        return [SpecError(doc.file, *doc.key_at(path + (key,)),
                          f"{where}: key {describe(key)} {text}")]
    match kind:
        case "additionalProperties" if isinstance(error.instance, dict):
            return _unknown_fields(doc, error, path)
        case "required":
            missing = [r for r in error.validator_value
                       if isinstance(error.instance, dict) and r not in error.instance]
            return [SpecError(doc.file, *pos, f'{where}: missing required field "{name}"' if path
                              else f'missing required field "{name}" at the top level')
                    for name in missing]
        case "type":
            wanted = error.validator_value
            wanted = wanted if isinstance(wanted, list) else [wanted]
            words = " or ".join(TYPE_WORDS.get(w, w) for w in wanted)
            return [SpecError(doc.file, *pos,
                              f"{where}: expected {words}, got {describe(error.instance)}")]
        case "const":
            return [SpecError(doc.file, *pos, f"{where}: expected {describe(error.validator_value)}, "
                                              f"got {describe(error.instance)}")]
        case "enum":
            choices = ", ".join(describe(c) for c in error.validator_value if c is not None)
            return [SpecError(doc.file, *pos,
                              f"{where}: {describe(error.instance)} is not one of {choices}")]
        case "oneOf" | "anyOf":
            return _alternatives(doc, error, path)
        case "minLength" if error.validator_value == 1:
            return [SpecError(doc.file, *pos, f"{where}: must not be empty")]
        case "maxLength":
            return [SpecError(doc.file, *pos, f"{where}: is {len(error.instance)} characters, longer than "
                                              f"{error.validator_value}")]
        case _ if custom and kind not in _OWN_WORDING:
            return [SpecError(doc.file, *pos, f"{where}: {describe(error.instance)} {custom}")]
        case _:
            return [SpecError(doc.file, *pos, f"{where}: {error.message}")]


def schema_errors(doc: Document) -> list[SpecError]:
    """Every schema violation in one document (a mapping), positioned and worded for people."""
    out: list[SpecError] = []
    for error in validator().iter_errors(doc.data):
        out.extend(convert(doc, error))
    return sorted(set(out))
