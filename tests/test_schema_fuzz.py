"""Property tests: whatever YAML arrives, validation never raises and every error has a real position."""

from __future__ import annotations

import copy
import io
import json
import pathlib
import tempfile
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volt_spec.schema import HostLimits, load_specs, validate_command
from volt_spec.schema.source import line_count

LIMITS = HostLimits(max_vcpus=254, mem_mib=64 * 1024)
GOOD: dict[str, Any] = {
    "apiVersion": "volt/v1", "kind": "VirtualMachine",
    "metadata": {"name": "fuzz", "labels": {"team": "demo"}},
    "spec": {
        "kernel": {"path": "builtin:testguest", "cmdline": "volt.ticks=0", "initrd": None},
        "vcpus": 1, "memory": "128Mi", "running": True,
        "devices": {"serial": {"log": True}},
        "snapshots": {"restore": "latest", "clock": "continue",
                      "triggers": [{"trigger": "ready"}, {"trigger": "interval", "every": "1m"},
                                   {"trigger": "console", "match": "^x"}, {"trigger": "stop"}],
                      "retain": {"count": 3, "maxAge": "1d"}},
    },
}
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=False), st.text(max_size=12),
                    st.sampled_from(["128Mi", "1.5Gi", "0Mi", "volt/v1", "VirtualMachine", "ready",
                                     "interval", "console", "stop", "5m", "builtin:testguest",
                                     "k\x00", "", "disk.img"]))
keys = st.one_of(st.text(max_size=8), st.sampled_from(
    ["apiVersion", "kind", "metadata", "spec", "name", "kernel", "path", "memory", "vcpus",
     "snapshots", "triggers", "trigger", "every", "retain", "count", "devices", "disks"]))
trees = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=25)


def dump(docs: list[Any], style: str) -> str:
    if style == "json":
        return "\n---\n".join(json.dumps(d) for d in docs) + "\n"
    from ruamel.yaml import YAML
    yaml = YAML(typ="rt")
    yaml.default_flow_style = style == "flow"
    out = io.StringIO()
    yaml.dump_all(docs, out)
    return out.getvalue()


def check(text: str) -> None:
    """Validate `text` as a file: no exception, exit 0 or 1, every error inside the file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "spec.yaml"
        path.write_text(text, encoding="utf-8")
        specs, errors = load_specs([str(path)], LIMITS)
        lines = line_count(text)
        for e in errors:
            assert e.file == str(path)
            assert 1 <= e.line <= lines and e.col >= 1, (str(e), text)
            assert e.message and "\n" not in e.message
        for spec in specs:
            assert len(spec.machine_hash()) == len(spec.spec_hash()) == 64
        out = io.StringIO()
        rc = validate_command([str(path)], out, LIMITS)
        assert rc == (1 if errors else 0)
        assert "Traceback" not in out.getvalue()


@SETTINGS
@given(st.lists(trees, min_size=1, max_size=3), st.sampled_from(["json", "block", "flow"]))
def test_random_documents_never_raise(docs: list[Any], style: str) -> None:
    check(dump(docs, style))


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> dict:
    doc = copy.deepcopy(GOOD)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)[1:]))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["delete", "replace", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(trees)
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(keys)] = draw(scalars)
        elif isinstance(parent[path[-1]], list):
            parent[path[-1]].append(draw(trees))
    return doc


@SETTINGS
@given(mutated(), st.sampled_from(["json", "block", "flow"]))
def test_mutated_good_spec_never_raises(doc: dict, style: str) -> None:
    check(dump([doc], style))


@SETTINGS
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{},\"'&*!|>#%@?\n\t 01.~\x07\\")), max_size=60))
def test_random_text_never_raises(text: str) -> None:
    check(text)


def test_the_unmutated_fuzz_base_is_valid() -> None:
    for style in ("json", "block", "flow"):
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "good.yaml"
            path.write_text(dump([GOOD], style))
            specs, errors = load_specs([str(path)], LIMITS)
            assert errors == [] and [s.name for s in specs] == ["fuzz"]
