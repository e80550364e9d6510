"""`-o jsonpath=TEMPLATE`: the part of kubectl's JSONPath templates people use in scripts.

    {.items[*].name}                      every VM's name, space-separated
    {.items[0].state}  {.pid}             an index; a single object (one VM named) is the root
    {range .items[*]}{.name}{"\\t"}{.state}{"\\n"}{end}
    {.items[?(@.state=="failed")].name}   a filter on one field (== or !=, a string or number)

Text outside braces is printed as it is; a missing field prints nothing (kubectl's default).
"""

from __future__ import annotations

import json
import re

_TOKEN = re.compile(r"\{([^{}]*)\}")
_STEP = re.compile(r"""\.(?P<field>[A-Za-z_][A-Za-z0-9_-]*)|\[(?P<index>-?\d+|\*)\]
                       |\[\?\(@\.(?P<fkey>[A-Za-z_][A-Za-z0-9_-]*)\s*(?P<fop>==|!=)\s*(?P<fval>"[^"]*"|'[^']*'|-?[\d.]+)\)\]""",
                   re.VERBOSE)


class JsonPathError(ValueError):
    """A template that does not parse: the one-line reason."""


def render(template: str, root) -> str:
    """The template filled in from `root`."""
    pieces = _parse(template)
    out: list[str] = []
    _emit(pieces, 0, len(pieces), [root], out)
    return "".join(out)


def _parse(template: str) -> list[tuple[str, str]]:
    """[(kind, text)]: ("text", literal) | ("expr", path) | ("range", path) | ("end", "")."""
    pieces, pos, depth = [], 0, 0
    for m in _TOKEN.finditer(template):
        if m.start() > pos:
            pieces.append(("text", template[pos:m.start()]))
        body = m[1].strip()
        if body.startswith("range "):
            pieces.append(("range", body[6:].strip()))
            depth += 1
        elif body == "end":
            depth -= 1
            pieces.append(("end", ""))
        elif body.startswith(('"', "'")):
            pieces.append(("text", _literal(body)))
        else:
            pieces.append(("expr", body))
        if depth < 0:
            raise JsonPathError("jsonpath: {end} without {range}")
        pos = m.end()
    if "{" in template[pos:] or "}" in template[pos:]:
        raise JsonPathError(f"jsonpath: unbalanced braces in {template!r}")
    if depth:
        raise JsonPathError("jsonpath: {range} without {end}")
    return pieces + ([("text", template[pos:])] if pos < len(template) else [])


def _literal(body: str) -> str:
    try:
        return json.loads(body if body.startswith('"') else '"' + body[1:-1].replace('"', '\\"') + '"')
    except ValueError:
        raise JsonPathError(f"jsonpath: bad string literal {body}") from None


def _emit(pieces, start: int, stop: int, scope: list, out: list[str]) -> None:
    i = start
    while i < stop:
        kind, text = pieces[i]
        if kind == "text":
            out.append(text)
        elif kind == "expr":
            out.append(" ".join(_text(v) for v in select(text, scope[-1])))
        elif kind == "range":
            end = _matching_end(pieces, i)
            for item in select(text, scope[-1]):
                _emit(pieces, i + 1, end, [*scope, item], out)
            i = end
        i += 1


def _matching_end(pieces, i: int) -> int:
    depth = 0
    for j in range(i, len(pieces)):
        depth += pieces[j][0] == "range"
        depth -= pieces[j][0] == "end"
        if depth == 0:
            return j
    raise JsonPathError("jsonpath: {range} without {end}")


def select(path: str, node) -> list:
    """Every value `path` (.a.b[0][*][?(@.k=="v")]) reaches from node; '' and '@' are the node."""
    path = path.strip()
    path = path[1:] if path.startswith(("$", "@")) else path
    values, pos = [node], 0
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None:
            raise JsonPathError(f"jsonpath: cannot read {path!r} at {path[pos:]!r}")
        values = [v for value in values for v in _step(m, value)]
        pos = m.end()
    return values


def _step(m: re.Match, value) -> list:
    if m["field"] is not None:
        return [value[m["field"]]] if isinstance(value, dict) and m["field"] in value else []
    if not isinstance(value, list):
        return []
    if m["index"] == "*":
        return list(value)
    if m["index"] is not None:
        i = int(m["index"])
        return [value[i]] if -len(value) <= i < len(value) else []
    want = json.loads(m["fval"]) if m["fval"][0] != "'" else m["fval"][1:-1]
    same = (lambda v: isinstance(v, dict) and v.get(m["fkey"]) == want)
    return [v for v in value if same(v) == (m["fop"] == "==")]


def _text(value) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, (dict, list, bool)) else str(value)
