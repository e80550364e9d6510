"""runner/plaintable.py prints what tabulate's plain format prints, for any cells (its own
formatting for plain ones, tabulate's for the rest)."""

from __future__ import annotations

import string

from hypothesis import given, settings, strategies as st
from tabulate import tabulate

from volt_spec.runner.plaintable import _plain, table

TRICKY = ["", "-", "True", "False", "1", "-2", "1.5", "1e3", "nan", "inf", "infinity", "1_000", " x", "x ",
          "a\nb", "\x1bm", "\x01", "äö", "0x10", "12Mi", "in 5m", "vm/web-1"]
texts = st.one_of(st.sampled_from(TRICKY), st.text(alphabet=string.printable, max_size=8))
cells = st.one_of(st.none(), st.integers(-10**6, 10**12), st.booleans(), st.floats(allow_nan=False), texts)


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 5).flatmap(lambda n: st.tuples(
    st.lists(st.sampled_from(["NAME", "STATE", "VCPUS", "PID", "REASON", "A", ""]), min_size=n, max_size=n),
    st.lists(st.lists(cells, min_size=n, max_size=n), min_size=1, max_size=6))))
def test_the_same_table_as_tabulate(case) -> None:
    headers, body = case
    assert outcome(table, body, headers) == outcome(plain_tabulate, body, headers)


def plain_tabulate(body, headers) -> str:
    return tabulate(body, headers=headers, tablefmt="plain")


def outcome(make, body, headers):
    """The table, or the exception it raised (tabulate fails on some mixed columns)."""
    try:
        return make(body, headers)
    except Exception as e:  # noqa: BLE001
        return type(e)


def test_a_status_table_is_formatted_without_tabulate() -> None:
    headers = ["NAME", "STATE", "VCPUS", "MEMORY", "UPTIME", "PID", "SPEC", "REASON"]
    body = [["web-1", "running", 2, "128Mi", "5m12s", 4242, "in-sync", ""],
            ["db", "stopped", 1, "64Mi", "-", "-", "drifted", "spec.running is false"]]
    assert _plain(body, headers)
    assert table(body, headers) == tabulate(body, headers=headers, tablefmt="plain")
    assert table(body, headers).splitlines()[1] == "web-1   running        2  128Mi     5m12s     4242   in-sync"
