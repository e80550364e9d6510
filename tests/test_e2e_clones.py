"""spec.replicas end to end: N clones of one snapshot, each with its own disk, tap and generation
ID, that continue the snapshotted guest; `volt scale` and edits of the count add and delete them."""

from __future__ import annotations

import json
import re
import struct
import time

import pytest

from .netns import links
from .timing import scaled
from .voltcli import write

pytestmark = pytest.mark.hwlane

CMDLINE = "volt.ticks=0 volt.tick_ms=100 volt.mem=8 volt.blk=rw volt.io=loop volt.vmgenid"
SPEC = """apiVersion: volt/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  kernel: {{path: "builtin:testguest", cmdline: "{cmdline}"}}
  memory: 128Mi
{extra}  devices:
    disks: [{{name: data, path: {disk}}}]
    network: [{{name: eth0, tap: "{tap}"}}]
"""
GEN = re.compile(r"^vmgenid ([0-9a-f]{32})$", re.M)


def spec(tmp_path, name: str, disk: str, tap: str, extra: str = "") -> str:
    (tmp_path / disk).write_bytes(b"\0" * (1 << 20))
    return write(tmp_path / f"{name}.yaml", SPEC.format(name=name, cmdline=CMDLINE, disk=disk, tap=tap, extra=extra))


def disk_round(path) -> int:
    """The write round the guest's block task last put in sector 0 (word 0 = round << 32)."""
    with open(path, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0] >> 32


def rounds(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"^blk-round (\d+) ok", log, re.M)]


def test_replicas_are_clones_of_one_snapshot_each_with_its_own_disk_tap_and_generation_id(volt_ns, tmp_path):
    volt = volt_ns
    volt("apply", spec(tmp_path, "src", "src.img", "vt-src"))
    src_log = volt.wait_log("src", "mem-ok")
    volt.wait_log("src", "blk-round")
    checksum = re.search(r"^mem-ok (\w+)", src_log, re.M).group(1)
    volt.wait_log("src", "tick 3 ")
    before = max(rounds(volt.log("src")))                       # the snapshot holds a later round
    tick_before = max(int(n) for n in re.findall(r"^tick (\d+) ", volt.log("src"), re.M))
    snap = json.loads(volt("snapshot", "src", "--name", "gold", "-o", "json").stdout)
    volt("stop", "src")
    src_disk = (tmp_path / "src.img").read_bytes()

    web = spec(tmp_path, "web", "seed.img", "vt-{name}", extra="  replicas: 3\n  snapshots: {restore: gold}\n")
    lines = said(volt("apply", web))
    how = lines[0].rsplit(" by ", 1)[-1]
    assert how in ("reflink", "sparse copy"), lines
    restored = f"restored from {snap['id']}, data by {how}"
    assert lines == [f"vm/web-{i} {restored}" for i in range(3)]
    assert [r["name"] for r in volt.status()] == ["src", "web-0", "web-1", "web-2"]
    assert {"vt-web-0", "vt-web-1", "vt-web-2"} <= links(volt.ns)

    ids = set()
    for i in range(3):
        volt.wait_log(f"web-{i}", "mem-ok")
        volt.wait_log(f"web-{i}", "vmgenid")
        log = volt.wait_log(f"web-{i}", "blk-round")
        assert re.search(r"^mem-ok (\w+)", log, re.M).group(1) == checksum
        assert int(re.search(r"^tick (\d+) ", log, re.M).group(1)) > tick_before     # continues, not a boot
        assert min(rounds(log)) > before, "the block task did not continue from the snapshot"
        ids.add(GEN.search(log).group(1))
    assert len(ids) == 3 and GEN.search(src_log).group(1) not in ids

    # Each clone writes its own disk: stopped, web-0's disk stays as it left it while web-1 goes on.
    disks = [volt.home / "vms" / f"web-{i}" / "disks" / "data.img" for i in range(3)]
    assert len({d.stat().st_ino for d in disks}) == 3
    volt("stop", "web-0")
    stopped_at = disk_round(disks[0])
    wait_round(volt, "web-1", stopped_at + 3)
    assert disk_round(disks[0]) == stopped_at < disk_round(disks[1])
    assert (tmp_path / "src.img").read_bytes() == src_disk and not any((tmp_path / "seed.img").read_bytes())

    # Scale 3 -> 5 -> 2. A clone that ended meanwhile is started again (web-0, stopped above; in the
    # lane, under five guests' I/O, the guest of another once ended too), never deleted.
    up = said(volt("scale", "web", "5"))
    assert up[0] == f"vm/web-0 {restored}" and up[3:] == [f"vm/web-3 {restored}", f"vm/web-4 {restored}"], up
    assert all(ln in (f"vm/web-{i} unchanged", f"vm/web-{i} {restored}") for i, ln in enumerate(up[:3])), up
    down = said(volt("scale", "web", "2"))
    assert down[:3] == ["vm/web-4 deleted (scaled down)", "vm/web-3 deleted (scaled down)",
                        "vm/web-2 deleted (scaled down)"], down
    assert all(ln in (f"vm/web-{i} unchanged", f"vm/web-{i} {restored}") for i, ln in enumerate(down[3:])), down
    assert [r["name"] for r in volt.status()] == ["src", "web-0", "web-1"]
    assert not (volt.home / "vms" / "web-2").exists() and "vt-web-2" not in links(volt.ns)
    # The file says 3: apply puts the third back. Without replicas: one VM named web again.
    assert volt("diff", web, check=1).stdout.startswith("# vm/web-2: would be created")
    assert said(volt("apply", web))[2] == f"vm/web-2 {restored}"
    write(tmp_path / "web.yaml", (tmp_path / "web.yaml").read_text().replace("  replicas: 3\n", "")
          .replace("vt-{name}", "vt-web"))
    assert said(volt("apply", web)) == [f"vm/web-{i} deleted (no longer declared)" for i in range(3)] + [
        f"vm/web restored from {snap['id']}"]
    assert [r["name"] for r in volt.status()] == ["src", "web"]


def said(proc) -> list[str]:
    """The command's lines without their timings (` in 517 ms`)."""
    return [re.sub(r" in [\d.]+ m?s$", "", ln) for ln in proc.stdout.splitlines()]


def wait_round(volt, name: str, at_least: int) -> None:
    deadline = time.monotonic() + scaled(30)
    while max(rounds(volt.log(name)) or [0]) < at_least:
        assert time.monotonic() < deadline, f"{name} did not reach block round {at_least}"
        time.sleep(0.05)     # the guest writes its log as it goes: poll it
