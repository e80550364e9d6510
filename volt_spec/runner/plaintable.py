"""tabulate's "plain" table, without importing tabulate for the cells a `volt status` table holds.

Importing tabulate costs ~10 ms (it imports dataclasses, and so inspect), a sixth of a `volt
status`. For a table whose cells are all plain (ints, None, and strings of printable ASCII that
tabulate would not read as numbers or booleans, without surrounding spaces) its output is simple:
a column of ints is flushed right, any other column left, each column as wide as its widest cell
or its header plus two, columns joined by two spaces, lines right-stripped. That is what `table`
makes for such cells (tests/test_plaintable.py checks it against tabulate); anything else is left
to tabulate itself.
"""

from __future__ import annotations


def table(body: list[list], headers: list[str]) -> str:
    """tabulate(body, headers=headers, tablefmt="plain")."""
    if not _plain(body, headers):
        from tabulate import tabulate
        return tabulate(body, headers=headers, tablefmt="plain")
    columns = []
    for header, cells in zip(headers, zip(*body)):
        ints = any(type(c) is int for c in cells) and all(c is None or type(c) is int for c in cells)
        texts = ["" if c is None else str(c) for c in cells]
        width = max(len(header) + 2, *map(len, texts))
        pad = str.rjust if ints else str.ljust
        columns.append([pad(header, width)] + [pad(t, width) for t in texts])
    return "\n".join("  ".join(line).rstrip() for line in zip(*columns))


def _plain(body: list[list], headers: list[str]) -> bool:
    return (bool(body) and all(_plain_text(h) for h in headers)
            and all(len(row) == len(headers) and all(map(_plain_cell, row)) for row in body))


def _plain_cell(cell) -> bool:
    return cell is None or type(cell) is int or (type(cell) is str and _plain_text(cell))


def _plain_text(text) -> bool:
    """Printable ASCII, no surrounding spaces, and neither a number (Python's float() reads it)
    nor a boolean to tabulate."""
    if type(text) is not str or not (text.isascii() and text.isprintable()) or text != text.strip():
        return False
    if text in ("True", "False"):
        return False
    try:
        float(text)
    except ValueError:
        return True
    return False
