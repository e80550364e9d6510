"""`-o jsonpath=`: the kubectl JSONPath template subset (pure logic)."""

from __future__ import annotations

import pytest

from volt_spec.cli.jsonpath import JsonPathError, render

ROOT = {"items": [{"name": "a", "state": "running", "pid": 7, "labels": {"team": "x"}},
                  {"name": "b", "state": "failed", "pid": None, "labels": {}}]}


@pytest.mark.parametrize("template, want", [
    ("{.items[*].name}", "a b"),
    ("{.items[0].pid}", "7"),
    ("{.items[-1].name}", "b"),
    ("{.items[5].name}", ""),
    ("{.items[*].labels.team}", "x"),
    ('{range .items[*]}{.name}{"\\t"}{.state}{"\\n"}{end}', "a\trunning\nb\tfailed\n"),
    ('{.items[?(@.state=="failed")].name}', "b"),
    ("{.items[?(@.state!='failed')].name}", "a"),
    ("{.items[?(@.pid==7)].name}", "a"),
    ("names: {.items[*].name}!", "names: a b!"),
    ("{.items[0].labels}", '{"team": "x"}'),
    ("{.items[1].pid}", ""),
])
def test_templates(template, want):
    assert render(template, ROOT) == want


@pytest.mark.parametrize("template", ["{.items[}", "{range .items[*]}{.name}", "{end}", "{.items}}", "{.a b}"])
def test_bad_templates_are_one_line_errors(template):
    with pytest.raises(JsonPathError) as e:
        render(template, ROOT)
    assert "\n" not in str(e.value)
