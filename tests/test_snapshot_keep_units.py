"""Which snapshots retention governs (manual ones only with --expire), and deleting all of one VM's
snapshots (`snapshots delete --all`, `delete --purge`) without following a symlink out."""

from __future__ import annotations

import os

import pytest

from volt_spec.names import BadName
from volt_spec.runner.apply import delete
from volt_spec.snapshot.catalogue import Catalogue, expires, read, retention_victims
from volt_spec.snapshot.format import encode


def snap(folder, snap_id: str, created: float, trigger: str | None = "interval", **meta) -> None:
    path = folder / snap_id
    path.mkdir(parents=True)
    if trigger is not None:
        meta["trigger"] = trigger
    (path / "state.json").write_bytes(encode({"meta": dict(meta, created=created)}))


def victims(folder, count=None, max_age=None, keep=(), now=1000.0) -> list[str]:
    return [p.name for p in retention_victims(folder, "v", count, max_age, set(keep), now)]


def test_manual_snapshots_neither_count_nor_age_out(tmp_path):
    for i, trigger in enumerate(["manual", "interval", "manual", None, "interval", "stop", "manual"]):
        snap(tmp_path, f"s{i}", 100.0 + i, trigger)
    assert victims(tmp_path, count=1) == ["s1", "s4"]          # 3 policy snapshots, keep the newest
    assert victims(tmp_path, count=3) == []
    assert victims(tmp_path, max_age=0.5, now=106.0) == ["s1", "s4"]   # never the newest policy one


def test_an_expiring_manual_snapshot_counts_like_a_policy_one(tmp_path):
    snap(tmp_path, "m", 100.0, "manual")
    snap(tmp_path, "e1", 101.0, "manual", expire=True)
    snap(tmp_path, "p", 102.0, "ready")
    snap(tmp_path, "e2", 103.0, "manual", expire=True)
    snap(tmp_path, "odd", 99.0, "manual", expire="yes")        # only `true` marks one
    assert victims(tmp_path, count=2) == ["e1"]
    assert victims(tmp_path, count=1, keep={"e1"}) == ["p"]    # the one it runs from stays
    assert [expires(read(tmp_path / i, "v")) for i in ("m", "e1", "p", "odd")] == [False, True, True, False]


def outside_with_a_file(tmp_path):
    outside = tmp_path / "outside"
    (outside / "keep-me").mkdir(parents=True)
    (outside / "keep-me" / "state.json").write_text("not ours")
    return outside


def test_delete_all_deletes_every_snapshot_and_follows_no_symlink(tmp_path):
    root, outside = tmp_path / "snapshots", outside_with_a_file(tmp_path)
    snap(root / "v", "a", 1.0)
    snap(root / "v", "b", 2.0, "manual")
    (root / "v" / "broken").mkdir()                             # no state.json: deleted all the same
    os.symlink(outside / "keep-me", root / "v" / "link")        # a symlink named as a snapshot
    os.symlink(outside, root / "w")                             # a VM folder that is a symlink
    cat = Catalogue(root)
    assert sorted(cat.delete_all("v")) == ["a", "b", "broken"]
    assert cat.entries("v") == [] and (root / "v" / "link").is_symlink()
    assert cat.delete_all("w") == [] and cat.delete_all("nothing") == []
    assert (outside / "keep-me" / "state.json").read_text() == "not ours"
    with pytest.raises(BadName):
        cat.delete_all("../outside")


def test_purge_removes_the_folder_and_nothing_it_points_to(tmp_path):
    root, outside = tmp_path / "snapshots", outside_with_a_file(tmp_path)
    snap(root / "v", "a", 1.0)
    (root / "v" / ".a.partial-12").mkdir()
    os.symlink(outside, root / "v" / "link")
    os.symlink(outside, root / "w")
    cat = Catalogue(root)
    assert cat.purge("v") and not os.path.lexists(root / "v")
    assert cat.purge("w") and not os.path.lexists(root / "w")
    assert not cat.purge("v")
    assert (outside / "keep-me" / "state.json").read_text() == "not ours"


def test_delete_purge_of_a_deleted_vm_purges_its_snapshots(tmp_path):
    snap(tmp_path / "snapshots" / "gone", "a", 1.0)
    assert delete("gone", tmp_path, purge=True).line().startswith(
        "vm/gone snapshots purged (the VM was already deleted) in ")
    assert not (tmp_path / "snapshots" / "gone").exists()
    assert delete("gone", tmp_path, purge=True).line() == "vm/gone failed: no such VM"
    assert delete("gone", tmp_path).line() == "vm/gone failed: no such VM"
