"""Console-trigger patterns: RE2 syntax, matched in time linear in the line (google-re2).

A pattern comes from a spec or the API and runs against every line the guest prints, on the
VMM's console path; Python's backtracking `re` takes minutes on `(\\S+\\s*)+!` against a long
line, so a hostile or careless pattern could freeze the VMM. RE2 never backtracks; what it does
not have (backreferences, lookaround) is refused when the spec is validated. Imported only when
a spec has a console trigger (re2's import costs ~12 ms).
"""

from __future__ import annotations

MAX_PATTERN = 1024          # characters; RE2 also bounds the compiled program's memory


class PatternError(ValueError):
    """A console pattern RE2 cannot take: the message says why."""


def compile_pattern(pattern: object):
    """The compiled RE2 pattern (its `.search(str)` is what triggers use)."""
    if not isinstance(pattern, str) or not pattern:
        raise PatternError("a console trigger's match must be a non-empty string")
    if len(pattern) > MAX_PATTERN:
        raise PatternError(f"is {len(pattern)} characters; at most {MAX_PATTERN}")
    import re2
    options = re2.Options()
    options.log_errors = False                  # else RE2 logs each refusal on stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as e:
        reason = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise PatternError(f"{reason} (patterns use RE2 syntax: no backreferences or lookaround)") from None
