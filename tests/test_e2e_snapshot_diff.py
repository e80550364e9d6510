"""Diff snapshots end to end: a guest that keeps rewriting 16 MiB (volt.dirty) beside a region it
only reads (volt.mem); a full snapshot, then diffs while it runs; every diff restores and the
guest carries on with no page lost (a lost page is a dirty-CORRUPT line or a wrong mem-ok)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from .voltcli import write

pytestmark = pytest.mark.hwlane

SPEC = """apiVersion: volt/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  kernel:
    path: builtin:testguest
    cmdline: "volt.ticks=0 volt.tick_ms=100 volt.mem=24 volt.dirty=16"
  memory: 128Mi
  snapshots:
    incremental: {{fullEvery: 10}}
"""
GEN = re.compile(r"^dirty-ok gen=(\d+)$", re.M)


def wait_new(volt, name: str, offset: int, pattern: re.Pattern, timeout: float = 30.0) -> re.Match:
    """The first match of `pattern` in the VM's console after byte `offset` (whole lines only);
    a CORRUPT line fails at once (Volt.wait_match)."""
    return volt.wait_match(name, pattern, offset, timeout, forbid="CORRUPT")[0]


def guest_memory(snapshot) -> list[bytes]:
    """The guest RAM a snapshot (a chain, for a diff) restores, read through the restore's mapping."""
    from volt_spec.snapshot.restore import load
    _, memory, checks = load(str(snapshot))
    try:
        checks()
        return [bytes(r.map) for r in memory.regions]
    finally:
        memory.close()


def last_gen(volt, name: str) -> int:
    return int(GEN.findall(volt.log(name))[-1])


def test_diffs_restore_and_the_guest_loses_no_page(volt, tmp_path):
    spec = write(tmp_path / "d.yaml", SPEC.format(name="d"))
    volt("apply", spec)
    checksum = wait_new(volt, "d", 0, re.compile(r"^mem-ok (\w+)$", re.M)).group(1)
    wait_new(volt, "d", 0, re.compile(r"^dirty-ok gen=2$", re.M))
    taken = [json.loads(volt("snapshot", "d", "--name", "base", "-o", "json").stdout)]
    gens = {}                             # the generation each snapshot was taken after, at least
    for i in range(1, 6):
        gens[f"d{i}"] = last_gen(volt, "d") + 1
        wait_new(volt, "d", 0, re.compile(rf"^dirty-ok gen={gens[f'd{i}']}$", re.M))
        taken.append(json.loads(volt("snapshot", "d", "--name", f"d{i}", "-o", "json").stdout))
    assert [(t["id"], t["kind"], t.get("parent")) for t in taken] == [
        ("base", "full", None), ("d1", "diff", "base"), ("d2", "diff", "d1"), ("d3", "diff", "d2"),
        ("d4", "diff", "d3"), ("d5", "diff", "d4")]
    for t in taken[1:]:                   # the 16 MiB rewritten, its neighbours, not the 24 MiB only read
        assert t["size_bytes"] < taken[0]["size_bytes"] - (16 << 20), t     # (on disk: what the file holds)
    rows = {r["id"]: r for r in json.loads(volt("snapshots", "list", "-o", "json").stdout)}
    assert all(r["valid"] for r in rows.values()) and rows["d3"]["parent"] == "d2" and rows["base"]["kind"] == "full"
    assert rows["d3"]["tracking"] == "kvm-dirty-log+clear" and rows["base"]["tracking"] is None    # both KVMs have it

    gens["d6"] = last_gen(volt, "d") + 1
    for snap in ("d5", "d1", "d3"):
        before = len(volt.log("d"))
        assert volt("restore", "d", "--snapshot", snap).stdout.startswith(f"vm/d restored from {snap}")
        offset = len(volt.log("d"))     # the old VMM is gone (the restored guest may be a line ahead)
        first = int(wait_new(volt, "d", offset, GEN).group(1))
        assert gens[snap] <= first <= gens[f"d{int(snap[1]) + 1}"], (snap, first, gens)   # it went on from there
        wait_new(volt, "d", offset, re.compile(rf"^dirty-ok gen={first + 2}$", re.M))
        assert wait_new(volt, "d", offset, re.compile(r"^mem-ok (\w+)$", re.M)).group(1) == checksum
        assert "CORRUPT" not in volt.log("d")[before:]                 # not even in the first pass

    # The next snapshot is a diff on the one restored (d3), not on the newest.
    after = json.loads(volt("snapshot", "d", "--name", "after", "-o", "json").stdout)
    assert (after["kind"], after["parent"]) == ("diff", "d3")

    # Squashed, d5 is a full snapshot holding the same guest: its memory reads the same as the chain's.
    chain_memory = guest_memory(volt.home / "snapshots" / "d" / "d5")
    assert volt("snapshots", "squash", "d5").stdout.startswith("snapshot d5 squashed: a full snapshot")
    rows = {r["id"]: r for r in json.loads(volt("snapshots", "list", "-o", "json").stdout)}
    assert (rows["d5"]["kind"], rows["d5"]["parent"], rows["d5"]["valid"]) == ("full", None, True)
    assert guest_memory(volt.home / "snapshots" / "d" / "d5") == chain_memory
    assert "a full snapshot already" in volt("snapshots", "squash", "d5", check=1).stderr
    # A diff whose chain runs through a snapshot squashed later still restores.
    top = json.loads(volt("snapshot", "d", "--name", "top", "-o", "json").stdout)      # on `after`, on d3
    assert volt("snapshots", "squash", "d3").stdout.startswith("snapshot d3 squashed")
    rows = {r["id"]: r for r in json.loads(volt("snapshots", "list", "-o", "json").stdout)}
    assert top["parent"] == "after" and rows["top"]["valid"] and rows["after"]["parent"] == "d3", rows["top"]
    assert volt("restore", "d", "--snapshot", "top").stdout.startswith("vm/d restored from top")
    offset = len(volt.log("d"))
    assert volt("restore", "d", "--snapshot", "d5").stdout.startswith("vm/d restored from d5")
    wait_new(volt, "d", offset, re.compile(r"^dirty-ok gen=\d+$", re.M))
    assert wait_new(volt, "d", offset, re.compile(r"^mem-ok (\w+)$", re.M)).group(1) == checksum
    out = volt("snapshot", "d", "--name", "whole", "--full", "-o", "json").stdout
    assert json.loads(out)["kind"] == "full"


def test_a_diff_whose_parent_is_missing_or_changed_is_refused(volt, tmp_path):
    spec = write(tmp_path / "p.yaml", SPEC.format(name="p"))
    volt("apply", spec)
    wait_new(volt, "p", 0, re.compile(r"^dirty-ok gen=2$", re.M))
    for name in ("base", "one", "two", "other"):
        volt("snapshot", "p", "--name", name, *(["--full"] if name in ("base", "other") else []))
    folder = volt.home / "snapshots" / "p"
    assert "is the parent of diff(s) two" in volt("snapshots", "delete", "one", check=1).stderr
    shutil.move(folder / "one", tmp_path / "one")
    row = {r["id"]: r for r in json.loads(volt("snapshots", "list", "-o", "json").stdout)}["two"]
    assert not row["valid"] and "parent snapshot one is missing" in row["reason"], row
    assert "parent snapshot one is missing" in volt("restore", "p", "--snapshot", "two", check=1).stderr
    shutil.copytree(folder / "other", folder / "one")       # a sound snapshot, but not the parent
    err = volt("restore", "p", "--snapshot", "two", check=1).stderr
    assert "parent snapshot one is not the one it was taken on" in err, err
    shutil.rmtree(folder / "one")
    shutil.move(tmp_path / "one", folder / "one")
    assert volt("restore", "p", "--snapshot", "two").stdout.startswith("vm/p restored from two")
    wait_new(volt, "p", 0, re.compile(r"^mem-ok \w+$", re.M))


BLK_SPEC = """apiVersion: volt/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  kernel: {{path: "builtin:testguest", cmdline: "volt.ticks=0 volt.tick_ms=50 volt.dirty=4 volt.blk=rw volt.io=loop"}}
  memory: 128Mi
  snapshots: {{incremental: {{fullEvery: 4}}}}
  devices:
    disks: [{{name: data, path: {disk}}}]
"""
ROUND = re.compile(r"^blk-round (\d+) ok", re.M)


def test_diffs_hold_what_virtio_blk_read_into_guest_memory(volt, tmp_path):
    """Each diff is taken while the guest's block task writes and reads its disk back in rounds
    (the reads land in guest memory through the VMM, not the guest's page tables, and the used
    ring is the VMM's write too): every diff restores with the task going on, rounds verified."""
    (tmp_path / "b.img").write_bytes(b"\0" * (1 << 20))
    volt("apply", write(tmp_path / "b.yaml", BLK_SPEC.format(name="b", disk=tmp_path / "b.img")))
    wait_new(volt, "b", 0, ROUND)
    kinds = []
    for name in ("b0", "b1", "b2", "b3"):
        wait_new(volt, "b", len(volt.log("b")), ROUND)          # another round verified since the last one
        kinds.append(json.loads(volt("snapshot", "b", "--name", name, "-o", "json").stdout)["kind"])
    assert kinds == ["full", "diff", "diff", "diff"]
    for snap in ("b3", "b1"):
        before = len(volt.log("b"))
        volt("restore", "b", "--snapshot", snap)
        offset = len(volt.log("b"))
        first = wait_new(volt, "b", offset, ROUND)
        wait_new(volt, "b", offset + first.end(), ROUND)            # and rounds go on after it
        wait_new(volt, "b", offset, re.compile(r"^dirty-ok gen=\d+$", re.M))
        assert "FAIL" not in volt.log("b")[before:] and "CORRUPT" not in volt.log("b")[before:]


def test_a_diff_of_a_vm_that_tracks_no_pages_is_refused_and_writes_nothing(volt, tmp_path):
    from .voltcli import spec_text
    volt("apply", write(tmp_path / "n.yaml", spec_text("n")))
    volt.wait_log("n", "VOLT-READY")
    err = volt("snapshot", "n", "--diff", check=1).stderr
    assert "does not track dirty pages" in err and "snapshots.incremental" in err, err
    assert not [p for p in (volt.home / "snapshots" / "n").iterdir() if not p.name.startswith(".")]
    assert json.loads(volt("snapshot", "n", "-o", "json").stdout)["kind"] == "full"
