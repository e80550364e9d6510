"""Inputs that pass validation must not hurt later: specs, spec files, policies and API bodies.

Beyond the corpus (tests/specs/bad): every field of a good spec set to values a careless or
hostile user might write; each must be refused at validation with a positioned one-line error,
so nothing the VMM cannot take reaches it.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest
from ruamel.yaml import YAML

from volt_spec.schema import HostLimits, validate_command

from .kvm_required import require_kvm
from .timing import scaled
from .vmm_process import VmmProcess
from .voltcli import spec_text, write

LIMITS = HostLimits(max_vcpus=254, mem_mib=64 * 1024)
GOOD = {"apiVersion": "volt/v1", "kind": "VirtualMachine", "metadata": {"name": "ok"},
        "spec": {"kernel": {"path": "builtin:testguest", "cmdline": "volt.ticks=3"}, "vcpus": 1,
                 "memory": "128Mi"}}

BAD_VALUES = {
    ("metadata", "name"): ["", "UPPER", "a_b", "-x", "x-", "x" * 64, 5, None, [], {}, "a/b", "..", "a b", "é"],
    ("spec", "memory"): ["0Mi", "-1Mi", "1.5Gi", "abc", 0, True, "999999Gi", "4Mi", None, "128MB"],
    ("spec", "vcpus"): [0, -1, 1.5, "2", True, 100000, None],
    ("spec", "kernel", "cmdline"): ["a\0b", "a\nb", "x" * 2048, 5, [], "\x1b[31mred", "tab\there", "del\x7f"],
    ("spec", "kernel", "path"): ["", "vm\0linux", 5, None, "/nonexistent/kernel", "builtin:nope"],
    ("spec", "snapshots", "triggers"): [
        [{"trigger": "console", "match": r"(a)\1"}], [{"trigger": "console", "match": "("}],
        [{"trigger": "console", "match": r"(?<=x)y"}], [{"trigger": "console", "match": ""}],
        [{"trigger": "interval"}], [{"trigger": "interval", "every": "0s"}], [{"trigger": "bogus"}],
        "notalist", [{"trigger": "stop", "every": "1s"}], [{"trigger": "console", "match": "x" * 2000}]],
    ("spec", "snapshots", "retain", "count"): [0, -1, "3", 1.5],
    ("spec", "snapshots", "restore"): ["../x", "/abs", ".hidden", ""],
    ("metadata", "labels"): [{"ok": 5}, {"bad key!": "v"}, ["a"]],
    ("apiVersion",): ["volt/v2", None],
    ("kind",): ["Pod"],
}


def with_value(path: tuple, value) -> dict:
    doc = json.loads(json.dumps(GOOD))
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return doc


CASES = [(path, value) for path, values in BAD_VALUES.items() for value in values]


def test_the_hostile_spec_set_is_large_enough():
    assert len(CASES) >= 50


@pytest.mark.parametrize("path,value", CASES, ids=[f"{'.'.join(p)}={v!r}"[:60] for p, v in CASES])
def test_a_bad_value_is_refused_at_validation(tmp_path, path, value):
    spec = tmp_path / "bad.yaml"
    with open(spec, "w") as f:
        YAML().dump(with_value(path, value), f)
    out = io.StringIO()
    assert validate_command([str(spec)], out, LIMITS) == 1, out.getvalue()
    lines = out.getvalue().splitlines()
    assert "Traceback" not in out.getvalue()
    assert all(re.match(rf"^{re.escape(str(spec))}:\d+:\d+: ", ln) for ln in lines[:-1]), lines


def test_the_good_spec_of_the_hostile_set_is_good(tmp_path):
    spec = tmp_path / "good.yaml"
    with open(spec, "w") as f:
        YAML().dump(GOOD, f)
    assert validate_command([str(spec)], io.StringIO(), LIMITS) == 0


@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_a_spec_path_that_is_not_a_regular_file_is_refused_without_waiting(tmp_path, kind):
    path = str(tmp_path / "x.yaml")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = "/dev/zero"
    else:
        with open(path, "wb") as f:
            f.truncate(33 << 20)
    proc = subprocess.run([sys.executable, "-m", "volt_spec", "validate", path], capture_output=True, text=True,
                          timeout=scaled(30), stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert re.search(r"(is a FIFO|is a device|larger than 32 MiB)", proc.stdout), proc.stdout


def test_apply_of_a_nul_cmdline_refuses_and_creates_nothing(volt, tmp_path):
    spec = tmp_path / "n.yaml"
    spec.write_text(spec_text("n").replace('"volt.ticks=0 volt.tick_ms=200"', '"volt.ticks=0\\0init=/x"'))
    r = volt("apply", str(spec), check=1)
    assert "must not contain NUL" in r.stderr, r.stderr
    assert not (volt.home / "vms" / "n").exists()


def test_a_catastrophic_console_pattern_does_not_freeze_the_vm(volt, tmp_path):
    """`(\\S+\\s*)+!` against a 40-character tick line backtracks ~2^30 times in Python's re:
    matched by RE2 the guest goes on ticking and the VMM answers."""
    text = spec_text("cat", cmdline="volt.ticks=0 volt.tick_ms=50") + \
        "  snapshots:\n    triggers:\n      - trigger: console\n        match: '(\\S+\\s*)+!'\n"
    volt("apply", write(tmp_path / "cat.yaml", text))
    volt.wait_log("cat", "tick 20 ")
    assert volt.state("cat")["state"] == "running"


@pytest.fixture
def policy_api(tmp_path):
    require_kvm()
    from volt_spec.guest.build import build_guest
    sock = str(tmp_path / "api.sock")
    with VmmProcess("--kernel", str(build_guest()), "--cmdline", "volt.ticks=0 volt.tick_ms=200",
                    "--api-sock", sock) as vmm:
        vmm.wait_for(r"^tick 1 ")
        api = vmm.wait_api(sock)
        api.put("/policy", {"vm": "p", "snapshot_dir": str(tmp_path / "snaps"),
                            "triggers": [{"trigger": "interval", "every": "1h", "everySeconds": 3600}]})
        yield api


@pytest.mark.parametrize("body", [
    {"bogus": 1},
    {"vm": "p", "triggers": [{"trigger": "console", "match": "ok"}], "retain": {"count": 0}},
    {"vm": "p", "triggers": [{"trigger": "console", "match": "ok"}, {"trigger": "interval"}]},
    {"vm": "p", "triggers": [{"trigger": "console", "match": r"(a)\1"}]},
    {"vm": "p", "triggers": "all"},
    {"vm": "p", "triggers": [{"trigger": "stop", "extra": True}]},
    {"vm": "p", "clock": "sometimes"},
    {"vm": "Not A Name"},
    {"vm": "p", "retain": {"maxAgeSeconds": -5}},
    [1, 2],
])
def test_a_bad_policy_is_refused_whole_and_the_old_one_stays(policy_api, body):
    from volt_spec.api.errors import ApiError
    with pytest.raises(ApiError) as e:
        policy_api.put("/policy", body)
    assert e.value.status == 400, e.value.message
    assert policy_api.get("/policy")["triggers"] == ["interval"], "part of a refused policy was applied"
    assert policy_api.get("/vm")["state"] == "Running"
