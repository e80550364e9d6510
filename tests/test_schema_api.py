"""The spec API the runner uses: load_specs -> VmSpec (normalised), hashes, host limits, schema."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

from volt_spec.schema import HostLimits, SpecError, VmSpec, load_specs, schema_text

GOOD = pathlib.Path(__file__).parent / "specs" / "good"
LIMITS = HostLimits(max_vcpus=254, mem_mib=64 * 1024)
BASE = ("apiVersion: volt/v1\nkind: VirtualMachine\nmetadata: {{name: {name}}}\n"
        "spec:\n  kernel: {{path: {kernel}, cmdline: \"{cmdline}\"}}\n  vcpus: {vcpus}\n"
        "  memory: {memory}\n  running: {running}\n")


def write(tmp_path: pathlib.Path, name: str = "vm", kernel: str = "builtin:testguest",
          cmdline: str = "", vcpus: int = 1, memory: str = "128Mi", running: str = "true") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(BASE.format(name=name, kernel=kernel, cmdline=cmdline, vcpus=vcpus,
                                memory=memory, running=running))
    return str(path)


def one(path: str) -> VmSpec:
    specs, errors = load_specs([path], LIMITS)
    assert errors == [] and len(specs) == 1
    return specs[0]


def test_minimal_spec_gets_defaults() -> None:
    spec = one(str(GOOD / "minimal.yaml"))
    assert (spec.name, spec.kernel, spec.initrd, spec.cmdline, spec.boot) == \
        ("minimal", "builtin:testguest", None, "", None)
    assert (spec.vcpus, spec.memory_mib, spec.running, spec.serial_log) == (1, 128, True, True)
    assert spec.snapshots == {"restore": "latest", "fallback": "boot", "clock": "continue", "triggers": [],
                              "retain": {"count": 3, "maxAge": None}}
    assert spec.devices == {"serial": {"log": True}, "disks": [], "network": [], "virtioAnnounce": "acpi"}
    assert spec.source == str(GOOD / "minimal.yaml") and os.path.isabs(spec.source)
    assert spec.document["spec"] == {"kernel": {"path": "builtin:testguest"}}
    # 3 x the guest (a snapshot's memory file on a tmpfs is charged to the VMM's cgroup, and so are the
    # guest's copy-on-write pages while the writer runs) + 256 MiB
    assert spec.resources == {"memory_bytes": (3 * 128 + 256) << 20, "cpus": 1.0, "pids": 256}


def test_full_spec_is_normalised_with_absolute_paths() -> None:
    spec = one(str(GOOD / "full.yaml"))
    assert spec.kernel == spec.initrd == str(GOOD / "kernel.bin")
    assert (spec.vcpus, spec.memory_mib, spec.running, spec.serial_log, spec.boot) == \
        (2, 1024, False, False, "pvh")
    assert spec.labels == {"team": "demo", "example.com/tier": "gold", "empty": ""}
    assert spec.devices["disks"][1] == {"name": "data", "path": str(GOOD / "data.img"),
                                        "readOnly": True, "root": False}
    assert spec.devices["network"] == [{"name": "eth0", "tap": "tap-full0", "mac": "52:54:00:12:34:56"}]
    triggers = spec.snapshots["triggers"]
    assert triggers[0] == {"trigger": "ready", "marker": "VOLT-READY"}
    assert triggers[1] == {"trigger": "interval", "every": "90s"}
    assert spec.snapshots["retain"] == {"count": 1, "maxAge": "7d"}
    assert (spec.snapshots["restore"], spec.snapshots["clock"]) == ("snap-20240101.1", "realtime")
    assert spec.snapshots["fallback"] == "error"           # a named snapshot that is missing: refused


def test_memory_forms_agree() -> None:
    specs, errors = load_specs([str(GOOD / "multi.yaml")], LIMITS)
    assert errors == []
    assert [(s.name, s.memory_mib, s.vcpus) for s in specs] == \
        [("multi-a", 16, 1), ("multi-b", 64, 254), ("multi-c", 1024, 1)]


def test_machine_hash_changes_only_for_machine_fields(tmp_path: pathlib.Path) -> None:
    base = one(write(tmp_path))
    same = one(write(tmp_path, running="false"))
    assert base.machine_hash() == same.machine_hash()
    assert base.spec_hash() != same.spec_hash()
    for change in ({"vcpus": 2}, {"memory": "256Mi"}, {"cmdline": "volt.ticks=1"}):
        other = one(write(tmp_path, **change))
        assert other.machine_hash() != base.machine_hash(), change
        assert other.spec_hash() != base.spec_hash(), change
    assert one(write(tmp_path)).spec_hash() == base.spec_hash()     # deterministic


def test_machine_hash_follows_kernel_content(tmp_path: pathlib.Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"one")
    first = one(write(tmp_path, kernel="vmlinux")).machine_hash()
    kernel.write_bytes(b"two!")
    assert one(write(tmp_path, kernel="vmlinux")).machine_hash() != first


def test_specs_are_returned_only_without_errors(tmp_path: pathlib.Path) -> None:
    good = write(tmp_path, name="ok")
    bad = write(tmp_path, name="bad", vcpus=0)
    specs, errors = load_specs([good, bad], LIMITS)
    assert [s.name for s in specs] == ["ok"]
    assert errors == [SpecError(bad, 6, 10, "spec.vcpus: 0 is less than the minimum of 1")]
    assert str(errors[0]) == f"{bad}:6:10: spec.vcpus: 0 is less than the minimum of 1"


def test_duplicate_names_yield_no_spec_for_the_second(tmp_path: pathlib.Path) -> None:
    a = write(tmp_path, name="a")
    b = tmp_path / "copy.yaml"
    b.write_text(pathlib.Path(a).read_text())
    specs, errors = load_specs([a, str(b)], LIMITS)
    assert [s.source for s in specs] == [a] and len(errors) == 1


def test_host_limits_detect_reads_this_host() -> None:
    limits = HostLimits.detect()
    assert 1 <= limits.max_vcpus <= 254
    meminfo = pathlib.Path("/proc/meminfo").read_text()
    total_kib = int(next(l for l in meminfo.splitlines() if l.startswith("MemTotal:")).split()[1])
    assert limits.mem_mib == total_kib // 1024


def test_memory_beyond_host_is_an_error(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, memory="2Gi")
    specs, errors = load_specs([path], HostLimits(max_vcpus=8, mem_mib=1024))
    assert specs == [] and [str(e) for e in errors] == \
        [f"{path}:7:11: spec.memory: 2Gi exceeds this host's memory (1024 MiB)"]


def test_schema_text_is_a_valid_draft_2020_12_schema() -> None:
    from jsonschema import Draft202012Validator
    schema = json.loads(schema_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _descriptions_missing(node: object, path: str = "") -> list[str]:
    missing = []
    if isinstance(node, dict):
        for key in ("properties", "$defs"):
            for name, sub in (node.get(key) or {}).items():
                if isinstance(sub, dict) and "description" not in sub and "$ref" not in sub:
                    missing.append(f"{path}/{name}")
        for key, sub in node.items():
            if key != "if":             # `if` only selects a trigger kind: nothing to describe
                missing += _descriptions_missing(sub, f"{path}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            missing += _descriptions_missing(sub, f"{path}/{i}")
    return missing


def test_every_schema_field_is_described() -> None:
    assert _descriptions_missing(json.loads(schema_text())) == []


def test_every_schema_field_is_in_the_reference_page() -> None:
    doc = (pathlib.Path(__file__).parent.parent / "docs" / "spec.md").read_text()
    fields = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            fields.update(node.get("properties", {}))
            for sub in node.values():
                walk(sub)
        elif isinstance(node, list):
            for sub in node:
                walk(sub)
    walk(json.loads(schema_text()))
    assert sorted(f for f in fields if f"`{f}`" not in doc) == []


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "true"])
def test_vcpus_must_be_a_positive_integer(tmp_path: pathlib.Path, value: str) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(BASE.format(name="v", kernel="builtin:testguest", cmdline="", vcpus=value,
                                memory="128Mi", running="true"))
    specs, errors = load_specs([str(path)], LIMITS)
    assert specs == [] and [(e.line, e.col) for e in errors] == [(6, 10)]


def test_the_fast_yaml_path_reads_what_the_round_trip_loader_reads():
    """Same data, same positions, on every spec in the repository that parses."""
    import pathlib
    from volt_spec.schema.source import _fast_documents, _roundtrip_documents, line_count
    root = pathlib.Path(__file__).resolve().parents[1]
    files = sorted(root.glob("tests/specs/**/*.yaml")) + sorted(root.glob("examples/vms/*.yaml"))
    compared = 0
    for path in files:
        text = path.read_text()
        fast = _fast_documents(str(path), text, line_count(text))
        if fast is None:
            continue
        slow, errors = _roundtrip_documents(str(path), text, line_count(text))
        assert not errors and not fast[1]
        assert [(d.data, d.start, d.values, d.keys) for d in fast[0]] == \
               [(d.data, d.start, d.values, d.keys) for d in slow], path
        compared += 1
    assert compared >= 60
