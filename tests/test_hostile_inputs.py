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
import time

import pytest
from ruamel.yaml import YAML

from volt_spec.api.errors import ApiError
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
def policy_api(real_api, tmp_path):
    """A running VMM with an interval policy in place (the old policy a bad one must not touch)."""
    _vmm, api, _sock = real_api
    api.put("/policy", {"vm": "p", "snapshot_dir": str(tmp_path / "snaps"),
                        "triggers": [{"trigger": "interval", "every_s": 3600}]})
    return api


@pytest.mark.parametrize("body", [
    {"bogus": 1},
    {"vm": "p", "triggers": [{"trigger": "console", "match": "ok"}], "retain": {"count": 0}},
    {"vm": "p", "triggers": [{"trigger": "console", "match": "ok"}, {"trigger": "interval"}]},
    {"vm": "p", "triggers": [{"trigger": "console", "match": r"(a)\1"}]},
    {"vm": "p", "triggers": "all"},
    {"vm": "p", "triggers": [{"trigger": "stop", "extra": True}]},
    {"vm": "p", "clock": "sometimes"},
    {"vm": "Not A Name"},
    {"vm": "p", "retain": {"max_age_s": -5}},
    {"vm": "p", "triggers": [{"trigger": "interval", "every": "1h"}]},
    [1, 2],
])
def test_a_bad_policy_is_refused_whole_and_the_old_one_stays(policy_api, body):
    from volt_spec.api.errors import ApiError
    with pytest.raises(ApiError) as e:
        policy_api.put("/policy", body)
    assert e.value.status == 400, e.value.message
    assert policy_api.get("/policy")["triggers"] == ["interval"], "part of a refused policy was applied"
    assert policy_api.get("/vm")["state"] == "Running"


def _status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(name + ":")))


MALFORMED = [
    b"\x00\xff\xfe garbage\r\n\r\n", b"GET /vm\r\n\r\n", b"GET /vm HTTP/2.0\r\n\r\n", b"GET vm HTTP/1.1\r\n\r\n",
    b"GET /vm HTTP/1.1\r\nno colon\r\n\r\n", b"GET /vm HTTP/1.1\r\n folded: x\r\n\r\n",
    b"PUT /actions HTTP/1.1\r\nContent-Length: -5\r\n\r\n", b"PUT /actions HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n",
    b"PUT /actions HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
    b"PUT /actions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
    b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n", b"GET /vm HTTP/1.1\r\n" + b"".join(b"X-%d: b\r\n" % i for i in range(100)) + b"\r\n",
    b"GET /vm HTTP/1.1\r\nHost: a\rb\r\n\r\n", b"PUT /actions HTTP/1.1\r\nContent-Length: 9\r\n\r\nnot json!",
    b"PUT /actions HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]", b"PUT /actions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    b'PUT /actions HTTP/1.1\r\nContent-Length: 20\r\n\r\n{"action_type": 42}',
    b'PUT /actions HTTP/1.1\r\nContent-Length: 24\r\n\r\n{"action_type": "Boom"}',
    b'PATCH /vm HTTP/1.1\r\nContent-Length: 17\r\n\r\n{"state": "Dead"}',
    b'PATCH /vm HTTP/1.1\r\nContent-Length: 32\r\n\r\n{"state": "Paused", "extra": 1}',
    b'PUT /snapshot/create HTTP/1.1\r\nContent-Length: 30\r\n\r\n{"snapshot_path": "/etc/x"}  ',
    b'PUT /snapshot/create HTTP/1.1\r\nContent-Length: 25\r\n\r\n{"snapshot_path": "rel"} ',
    b'PUT /snapshot/create HTTP/1.1\r\nContent-Length: 21\r\n\r\n{"snapshot_path": 5} ',
    b'PUT /snapshot/load HTTP/1.1\r\nContent-Length: 28\r\n\r\n{"snapshot_path": "/tmp/x"} ',
    b'PUT /policy HTTP/1.1\r\nContent-Length: 12\r\n\r\n{"bogus": 1}',
    b'PUT /policy HTTP/1.1\r\nContent-Length: 45\r\n\r\n{"triggers": [{"trigger": "interval"}]}     ',
    b"DELETE /vm HTTP/1.1\r\n\r\n", b"GET /nope HTTP/1.1\r\n\r\n",
    b"PUT /actions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"action",          # then the client hangs up
    b"PUT /boot-source HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
]


@pytest.fixture
def real_api(tmp_path):
    require_kvm()
    from volt_spec.guest.build import build_guest
    sock = str(tmp_path / "api.sock")
    with VmmProcess("--kernel", str(build_guest()), "--cmdline", "volt.ticks=0 volt.tick_ms=200",
                    "--api-sock", sock) as vmm:
        vmm.wait_for(r"^tick 1 ")
        yield vmm, vmm.wait_api(sock), sock


def test_malformed_requests_get_4xx_and_the_vmm_answers_after_each(real_api):
    import socket
    vmm, api, sock = real_api
    assert len(MALFORMED) >= 30
    for raw in MALFORMED:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(scaled(10))
            s.connect(sock)
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            reply = s.makefile("rb").read()
        assert reply == b"" or re.match(rb"HTTP/1\.1 4\d\d ", reply), (raw[:60], reply[:200])
        assert api.get("/vm")["state"] == "Running", raw[:60]
    assert vmm.proc.poll() is None


def test_thousands_of_idle_connections_add_no_threads(real_api):
    import socket
    vmm, api, sock = real_api
    pid = vmm.proc.pid
    threads, rss = _status_field(pid, "Threads"), _status_field(pid, "VmRSS")
    conns = []
    try:
        for _ in range(2000):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(sock)
            except BlockingIOError:          # the backlog is full for a moment: the VMM is not
                s.close()
                continue
            conns.append(s)
        assert _status_field(pid, "Threads") == threads
        assert _status_field(pid, "VmRSS") - rss < 20 * 1024, "kB grown by idle connections"
    finally:
        for s in conns:
            s.close()
    deadline = time.monotonic() + scaled(30)
    while True:
        try:
            assert api.get("/vm")["state"] == "Running"
            break
        except ApiError as e:
            assert e.status == 503 and time.monotonic() < deadline
            time.sleep(0.05)                 # the VMM notices the hang-ups as it polls
