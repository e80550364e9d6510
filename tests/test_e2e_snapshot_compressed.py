"""snapshots.compress: zstd end to end: the memory kept compressed at rest, a restore that
decompresses it (on demand through userfaultfd where the host has it, ahead where not), the guest
carrying on with every page; a damaged compressed file refused before the guest runs."""

from __future__ import annotations

import json
import os
import re

import pytest

from .test_e2e_snapshot_diff import wait_new
from .voltcli import write

pytestmark = pytest.mark.hwlane

SPEC = """apiVersion: volt/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  kernel: {{path: "builtin:testguest", cmdline: "volt.ticks=0 volt.tick_ms=50 volt.mem=24 volt.memfill=text volt.dirty=8 volt.blk=rw volt.io=loop"}}
  memory: 128Mi
  snapshots: {{compress: zstd}}
  devices:
    disks: [{{name: data, path: {disk}}}]
"""
MEM_OK = re.compile(r"^mem-ok (\w+)$", re.M)
TICK = re.compile(r"^tick (\d+) ", re.M)


@pytest.mark.parametrize("mode", ["on-demand", "ahead"])
def test_a_compressed_snapshot_restores_and_the_guest_continues(volt, tmp_path, mode):
    if mode == "ahead":
        volt.env["VOLT_COMPRESSED_RESTORE"] = "ahead"        # the fallback, as on a host without userfaultfd
    (tmp_path / "c.img").write_bytes(b"\0" * (1 << 20))
    volt("apply", write(tmp_path / "c.yaml", SPEC.format(name="c", disk=tmp_path / "c.img")))
    checksum = wait_new(volt, "c", 0, MEM_OK).group(1)
    wait_new(volt, "c", 0, re.compile(r"^blk-round \d+ ok", re.M))
    taken = json.loads(volt("snapshot", "c", "--name", "z", "-o", "json").stdout)
    folder = volt.home / "snapshots" / "c" / "z"
    assert (folder / "memory.snap.zst").is_file() and not (folder / "memory.snap").exists()
    assert taken["memory_compressed_bytes"] == (folder / "memory.snap.zst").stat().st_size
    assert taken["memory_compressed_bytes"] < taken["memory_data_bytes"] * 0.75, taken   # the text fill compresses
    ticks = int(TICK.findall(volt.log("c"))[-1])

    offset = len(volt.log("c"))
    said = volt("restore", "c", "--snapshot", "z").stdout
    assert said.startswith("vm/c restored from z"), said
    assert int(wait_new(volt, "c", offset, TICK).group(1)) >= ticks      # the tick counter goes on
    assert wait_new(volt, "c", offset, MEM_OK).group(1) == checksum     # all 24 MiB as they were
    wait_new(volt, "c", offset, re.compile(r"^dirty-ok gen=\d+$", re.M))
    wait_new(volt, "c", offset, re.compile(r"^blk-round \d+ ok", re.M))
    booted = json.loads(volt("status", "c", "-o", "json").stdout)[0]["booted_from"]
    if mode == "on-demand" and not os.path.exists("/dev/userfaultfd"):
        mode = "ahead (" # a kernel before 6.1: the jailed VMM gets no userfaultfd, and says so
    assert booted.startswith(f"snapshot z (compressed memory, {mode}"), booted
    text = volt.log("c")[offset:]
    assert "FAIL" not in text and "CORRUPT" not in text

    again = json.loads(volt("snapshot", "c", "--name", "z2", "-o", "json").stdout)   # of a compressed restore
    assert again["memory_compressed_bytes"] > 0
    offset = len(volt.log("c"))
    volt("restore", "c", "--snapshot", "z2")
    assert wait_new(volt, "c", offset, MEM_OK).group(1) == checksum


def test_a_damaged_compressed_memory_file_is_refused_and_the_vm_keeps_running(volt, tmp_path):
    (tmp_path / "d.img").write_bytes(b"\0" * (1 << 20))
    volt("apply", write(tmp_path / "d.yaml", SPEC.format(name="d", disk=tmp_path / "d.img")))
    wait_new(volt, "d", 0, MEM_OK)
    volt("snapshot", "d", "--name", "good")
    volt("snapshot", "d", "--name", "bad")
    zst = volt.home / "snapshots" / "d" / "bad" / "memory.snap.zst"
    data = bytearray(zst.read_bytes())
    middle = len(data) // 3
    data[middle:middle + 64] = bytes(b ^ 0x5A for b in data[middle:middle + 64])
    zst.write_bytes(data)                                  # same size, new ctime: the fingerprint fails
    offset = len(volt.log("d"))
    err = volt("restore", "d", "--snapshot", "bad", check=1).stderr
    assert "changed or corrupt" in err and len(err.strip().splitlines()) == 1, err
    wait_new(volt, "d", offset, TICK)                      # the running VM was not replaced
    assert "INVALID" in volt("snapshots", "verify", "bad", check=1).stdout
    assert volt("snapshots", "verify", "good").stdout == "snapshot good: ok (state CRC-64 and memory checksum match)\n"
    volt("snapshots", "export", "good", "-o", str(tmp_path / "good.volt"))          # it travels compressed
    volt("snapshots", "import", str(tmp_path / "good.volt"), "--id", "again")
    assert (volt.home / "snapshots" / "d" / "again" / "memory.snap.zst").is_file()
    assert volt("restore", "d", "--snapshot", "again").stdout.startswith("vm/d restored from again")
