"""Label selectors (Kubernetes' syntax) and which VMs a command acts on: pure logic."""

from __future__ import annotations

import pytest

from volt_spec.runner.selector import SelectorError, parse, select

LABELS = {"web": {"team": "a", "tier": "front"}, "db": {"team": "b", "tier": "back"}, "job": {}}


def matching(selector: str) -> list[str]:
    return [n for n, labels in LABELS.items() if parse(selector)(labels)]


@pytest.mark.parametrize("selector, want", [
    ("team=a", ["web"]), ("team==a", ["web"]), ("team!=a", ["db", "job"]),
    ("tier in (front, back)", ["web", "db"]), ("team notin (a)", ["db", "job"]),
    ("team", ["web", "db"]), ("!team", ["job"]), ("team=b,tier=back", ["db"]), ("team=a, tier=back", []),
    ("example.com/role", []), ("team=", []),
])
def test_selectors_select(selector, want):
    assert matching(selector) == want


@pytest.mark.parametrize("selector", ["", "team=a,", "=a", "team in a", "team in (a b)", "a b", "team=a=b",
                                      "-x", "team in ()"])
def test_bad_selectors_are_refused_in_one_line(selector):
    with pytest.raises(SelectorError) as e:
        parse(selector)
    assert "\n" not in str(e.value)


def test_names_or_a_selector_or_everything():
    every = lambda: sorted(LABELS)          # noqa: E731
    assert select([], None, LABELS.get, every) == ["db", "job", "web"]
    assert select(["web", "db", "web"], None, LABELS.get, every) == ["web", "db"]
    assert select([], "team", LABELS.get, every) == ["db", "web"]
    with pytest.raises(SelectorError, match="not both"):
        select(["web"], "team=a", LABELS.get, every)
