"""`volt snapshots export` / `import`: one compressed, checked file per snapshot, round trip."""

from __future__ import annotations

import json
import re

import pytest

from .test_e2e_snapshot_diff import wait_new
from .voltcli import write

pytestmark = pytest.mark.hwlane

SPEC = """apiVersion: volt/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  kernel: {{path: "builtin:testguest", cmdline: "volt.ticks=0 volt.tick_ms=50 volt.mem=8 volt.dirty=2 volt.blk=rw volt.io=loop"}}
  memory: 128Mi
  snapshots: {{incremental: {{fullEvery: 5}}}}
  devices:
    disks: [{{name: data, path: {disk}}}]
"""


def test_an_export_of_a_diff_with_a_disk_imports_and_restores_and_a_damaged_one_is_refused(volt, tmp_path):
    (tmp_path / "x.img").write_bytes(b"\0" * (1 << 20))
    volt("apply", write(tmp_path / "x.yaml", SPEC.format(name="x", disk=tmp_path / "x.img")))
    checksum = wait_new(volt, "x", 0, re.compile(r"^mem-ok (\w+)$", re.M)).group(1)
    wait_new(volt, "x", 0, re.compile(r"^blk-round \d+ ok", re.M))
    volt("snapshot", "x", "--name", "base")
    wait_new(volt, "x", len(volt.log("x")), re.compile(r"^dirty-ok gen=\d+$", re.M))
    assert json.loads(volt("snapshot", "x", "--name", "top", "-o", "json").stdout)["kind"] == "diff"
    out = tmp_path / "top.volt"
    said = volt("snapshots", "export", "top", "-o", str(out)).stdout
    assert re.match(rf"snapshot top exported to {re.escape(str(out))}: [\d.]+ MiB \([\d.]+ MiB of data\)", said), said
    again = json.loads(volt("snapshots", "export", "top", "-o", str(tmp_path / "again.volt"), "--format", "json").stdout)
    assert again["bytes"] == out.stat().st_size < again["data_bytes"], again   # compressed (the patterns barely)

    volt("snapshots", "delete", "--all", "x")                    # the export needs neither it nor its parent
    assert volt("snapshots", "import", str(out)).stdout == f"snapshot top of vm/x imported from {out}\n"
    rows = json.loads(volt("snapshots", "list", "-o", "json").stdout)
    assert [(r["id"], r["kind"], r["valid"]) for r in rows] == [("top", "full", True)]
    assert "already exists" in volt("snapshots", "import", str(out), check=1).stderr
    offset = len(volt.log("x"))
    assert volt("restore", "x", "--snapshot", "top").stdout.startswith("vm/x restored from top")
    wait_new(volt, "x", offset, re.compile(r"^blk-round \d+ ok", re.M))
    assert wait_new(volt, "x", offset, re.compile(r"^mem-ok (\w+)$", re.M)).group(1) == checksum
    wait_new(volt, "x", offset, re.compile(r"^dirty-ok gen=\d+$", re.M))
    assert "FAIL" not in volt.log("x")[offset:] and "CORRUPT" not in volt.log("x")[offset:]

    data = bytearray(out.read_bytes())
    for name, damage in (("flipped", lambda d: d.__setitem__(len(d) // 2, d[len(d) // 2] ^ 0x40)),
                         ("truncated", lambda d: d.__delitem__(slice(len(d) * 2 // 3, None))),
                         ("garbage", lambda d: d.__setitem__(slice(None), b"not zstd at all" * 100))):
        bad = bytearray(data)
        damage(bad)
        (tmp_path / name).write_bytes(bad)
        err = volt("snapshots", "import", str(tmp_path / name), "--id", name, check=1).stderr
        assert err.startswith(f"volt: import of {tmp_path / name} refused: ") and len(err.splitlines()) == 1, err
    folder = volt.home / "snapshots" / "x"
    assert sorted(p.name for p in folder.iterdir()) == ["top"]      # nothing half-imported, nothing hidden
