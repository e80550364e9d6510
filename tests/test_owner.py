"""Owners, not paths: which source owns a VM, so a clone or a moved checkout owns the same VMs,
`--prune` deletes only its own, and a second source declaring a VM is a conflict. The specs here
have `running: false`: ownership is decided before any VM starts, so no KVM is needed."""

from __future__ import annotations

import json
import shutil
import pytest

from volt_spec.runner.owner import Owner, Resolver, Scope, normalize_url

from .gitrepo import clone, commit_all, git, upstream
from .voltcli import Volt, spec_text, write


@pytest.mark.parametrize("url, want", [
    ("https://GitHub.com/acme/fleet.git", "github.com/acme/fleet"),
    ("https://user:token@github.com/acme/fleet/", "github.com/acme/fleet"),
    ("git@github.com:acme/fleet.git", "github.com/acme/fleet"),
    ("ssh://git@github.com:22/acme/fleet.git", "github.com/acme/fleet"),
    ("ssh://git@example.com:2222/acme/fleet", "example.com:2222/acme/fleet"),
    ("file:///srv/git//fleet.git", "/srv/git/fleet"),
])
def test_one_spelling_per_repository(url, want):
    assert normalize_url(url) == want


def test_a_local_remote_is_its_real_path(tmp_path):
    (tmp_path / "up.git").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "up.git")
    assert normalize_url(str(tmp_path / "link")) == str(tmp_path / "up")
    assert normalize_url("../up.git", base=tmp_path / "sub") == str(tmp_path / "up")


def test_two_clones_of_one_upstream_give_one_owner(tmp_path):
    up = upstream(tmp_path / "up.git")
    a = clone(up, tmp_path / "a")
    write(a / "vms.yaml", spec_text("x", running=False))
    commit_all(a, "one")
    b = clone(up, tmp_path / "b")
    oa, ob = Resolver().owner(str(a / "vms.yaml")), Resolver().owner(str(b / "vms.yaml"))
    assert oa == ob and oa.id == f"git:{tmp_path}/up//vms.yaml"
    assert Resolver().commit(a) == Resolver().commit(b)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert Resolver().owner(str(plain / "v.yaml")) == Owner(None, str(plain / "v.yaml"))
    assert Resolver("fleet").owner(str(a / "vms.yaml")) == Owner("fleet", "vms.yaml")


def test_scopes_cover_the_applied_directory_not_its_subdirectories():
    d = Scope("git:h/r", "vms")
    assert d.covers(Owner("git:h/r", "vms/a.yaml"))
    assert not d.covers(Owner("git:h/r", "vms/old/a.yaml")) and not d.covers(Owner("git:h/other", "vms/a.yaml"))
    assert Scope("git:h/r", "").covers(Owner("git:h/r", "a.yaml"))
    assert Scope("git:h/r", "vms/a.yaml", exact=True).covers(Owner("git:h/r", "vms/a.yaml"))
    assert not Scope("git:h/r", "vms/a.yaml", exact=True).covers(Owner("git:h/r", "vms/b.yaml"))
    assert Scope("fleet", None).covers(Owner("fleet", "anything.yaml"))
    assert Owner.from_record({"source": "/old/path.yaml"}) == Owner(None, "/old/path.yaml")


@pytest.fixture
def cli(tmp_path):
    """The CLI on a $VOLT_HOME of its own (running: false specs need no KVM)."""
    return Volt(tmp_path / "home")


def owner_of(cli: Volt, name: str) -> dict:
    return json.loads((cli.home / "vms" / name / "applied.json").read_text())


def test_a_clone_owns_the_same_vms_and_prunes_them(cli, tmp_path):
    up = upstream(tmp_path / "up.git")
    a = clone(up, tmp_path / "a")
    write(a / "x.yaml", spec_text("x", running=False))
    write(a / "y.yaml", spec_text("y", running=False))
    commit_all(a, "two VMs")
    assert [ln.split(" in ")[0] for ln in cli("apply", str(a)).stdout.splitlines()] == [
        "vm/x created (stopped)", "vm/y created (stopped)"]
    b = clone(up, tmp_path / "b")
    assert cli("apply", str(b)).stdout.splitlines() == ["vm/x unchanged", "vm/y unchanged"]
    rec = owner_of(cli, "x")
    assert rec["source"] == str(b / "x.yaml") and rec["owner"] == {"source": f"git:{tmp_path}/up", "file": "x.yaml"}
    assert rec["commit"] == git(b, "rev-parse", "HEAD")
    assert [r["spec"] for r in cli.status()] == ["in-sync", "in-sync"]
    (b / "y.yaml").unlink()
    other = tmp_path / "plain"
    other.mkdir()
    write(other / "z.yaml", spec_text("z", running=False))
    cli("apply", str(other))
    out = cli("apply", str(b), "--prune").stdout.splitlines()
    assert out[0] == "vm/x unchanged" and out[1].startswith("vm/y deleted") and len(out) == 2
    assert [r["name"] for r in cli.status()] == ["x", "z"]


def applied_checkout(cli, tmp_path, file: str, name: str):
    """A clone of a fresh upstream holding one committed spec, applied."""
    a = clone(upstream(tmp_path / "up.git"), tmp_path / "a")
    write(a / file, spec_text(name, running=False))
    commit_all(a, "one")
    cli("apply", str(a))
    return a


def test_a_moved_checkout_stays_in_sync(cli, tmp_path):
    a = applied_checkout(cli, tmp_path, "x.yaml", "x")
    shutil.move(a, tmp_path / "moved")
    assert cli("apply", str(tmp_path / "moved")).stdout.strip() == "vm/x unchanged"
    assert cli.state("x")["spec"] == "in-sync"


def test_a_second_file_declaring_a_vm_is_a_conflict(cli, tmp_path):
    first = write(tmp_path / "first.yaml", spec_text("web", running=False))
    second = write(tmp_path / "second.yaml", spec_text("web", running=False, memory="256Mi"))
    cli("apply", first)
    for args in ([second], [second, "--dry-run"]):
        r = cli("apply", *args, check=1)
        assert r.stdout.strip() == (f"vm/web failed: conflict: vm/web is owned by {first}, not {second} "
                                    "(--force-conflicts takes it over; volt delete frees the name)")
    assert owner_of(cli, "web")["source"] == first
    out = cli("apply", second, "--force-conflicts").stdout
    assert out.startswith("vm/web replaced (machine changed: memory)"), out
    assert owner_of(cli, "web")["owner"]["file"] == second


def test_a_spec_moved_within_its_repository_takes_its_vm_along(cli, tmp_path):
    a = applied_checkout(cli, tmp_path, "old.yaml", "m")
    (a / "old.yaml").rename(a / "new.yaml")
    assert cli("apply", str(a), "--prune").stdout.strip() == "vm/m unchanged"
    assert owner_of(cli, "m")["owner"]["file"] == "new.yaml"
    cli("apply", str(a / "new.yaml"), "--source", "team-b", check=1)


def test_names_are_not_mistaken_for_paths(cli, tmp_path, monkeypatch):
    spec = write(tmp_path / "readme.yaml", spec_text("readme", running=False))
    cli("apply", spec)
    (tmp_path / "readme").mkdir()
    monkeypatch.chdir(tmp_path)
    r = cli("delete", "readme")
    assert r.stdout.startswith("vm/readme deleted"), r.stdout
    cli("apply", spec)
    assert cli("delete", "-f", spec).stdout.startswith("vm/readme deleted")
    r = cli("delete", "nosuch", check=1)
    assert r.stdout.strip() == "vm/nosuch failed: no such VM"
