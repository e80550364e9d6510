"""Label selectors in Kubernetes' syntax, and the VMs a command acts on (names and/or `-l`).

    a=b  a==b  a!=b  a in (x,y)  a notin (x,y)  a  !a      comma-separated, all must hold
"""

from __future__ import annotations

import re
from collections.abc import Callable

_KEY = r"(?:[a-z0-9]([-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_TERM = re.compile(rf"""\s*(?:
    (?P<not>!)\s*(?P<nkey>{_KEY})                                   # !a
  | (?P<skey>{_KEY})\s*(?P<setop>in|notin)\s*\((?P<set>[^()]*)\)     # a in (x, y)
  | (?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})          # a=b, a!=b
  | (?P<ekey>{_KEY})                                                # a
)\s*(?:,|$)""", re.VERBOSE)
_VALUE_RE = re.compile(rf"^{_VALUE}$")

Labels = dict


class SelectorError(ValueError):
    """A selector that does not parse: the one-line reason, naming where."""


def parse(text: str) -> Callable[[Labels], bool]:
    """A predicate on a VM's labels; SelectorError for a malformed selector."""
    checks: list[Callable[[Labels], bool]] = []
    pos = 0
    text = text.strip()
    if not text or text.endswith(","):
        raise SelectorError(f"{'empty selector' if not text else f'bad selector {text!r}: a trailing comma'} "
                            "(use a=b, a!=b, 'a in (x,y)', a or !a)")
    while pos < len(text):
        m = _TERM.match(text, pos)
        if m is None or m.end() == pos:
            raise SelectorError(f"bad selector {text!r} at {text[pos:][:20]!r} "
                                "(use a=b, a!=b, 'a in (x,y)', 'a notin (x,y)', a or !a, comma-separated)")
        checks.append(_check(m, text))
        pos = m.end()
    return lambda labels: all(c(labels) for c in checks)


def _check(m: re.Match, text: str) -> Callable[[Labels], bool]:
    if m["not"]:
        key = m["nkey"]
        return lambda labels: key not in labels
    if m["setop"]:
        key, values = m["skey"], [v.strip() for v in m["set"].split(",")]
        if not all(v and _VALUE_RE.match(v) for v in values):
            raise SelectorError(f"bad selector {text!r}: the set ({m['set']}) needs label values, comma-separated")
        if m["setop"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m["op"]:
        key, value = m["key"], m["value"]
        if m["op"] == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    key = m["ekey"]
    return lambda labels: key in labels


def select(names: list[str], selector: str | None, all_labels: Callable[[str], Labels],
           every: Callable[[], list[str]]) -> list[str]:
    """The VMs a command acts on: the names given (in order, once each), or those `selector` matches
    among every VM, or (neither) every VM. Names and a selector together are refused, as kubectl
    does; SelectorError for that and for a bad selector."""
    if selector is not None:
        if names:
            raise SelectorError("give VM names or -l SELECTOR, not both")
        match = parse(selector)
        return [n for n in every() if match(all_labels(n))]
    return list(dict.fromkeys(names)) if names else every()
