"""`volt apply`: reconcile the machine to the specs, one VM at a time, like `kubectl apply`.

Per VM the result is one of: created | unchanged | configured | replaced | restored | deleted.
What needs a new VM (kernel, initrd, cmdline, memory, vCPUs, devices: the spec's
machine hash) replaces it; everything else (labels, power state, policies) configures it.
A failed start leaves the earlier state running: on a replace the old VM is brought back.
A live VMM whose API is slow (busy: a large snapshot) is waited for, never replaced for it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..fsutil import file_sha256, os_error
from . import vmctl
from .home import VmDir, all_vm_names, write_json
from .observe import ALIVE, BUSY, COMPLETED, FAILED, observe

CREATED, UNCHANGED, CONFIGURED, REPLACED, RESTORED, DELETED = (
    "created", "unchanged", "configured", "replaced", "restored", "deleted")
PURGED = "snapshots purged"       # delete --purge of a VM deleted before: only its snapshots were left
BUSY_WAIT_S = 60.0        # how long apply waits for a live VMM whose API is slow ($VOLT_BUSY_WAIT_S)


class Result:
    __slots__ = ("name", "action", "detail", "seconds", "error")

    def __init__(self, name: str, action: str, detail: str = "", seconds: float = 0.0,
                 error: str | None = None) -> None:
        self.name, self.action, self.detail, self.seconds, self.error = name, action, detail, seconds, error

    def line(self, dry_run: bool = False) -> str:
        if self.error:
            return f"vm/{self.name} failed: {self.error}"
        text = f"vm/{self.name} {self.action}"
        if self.action == RESTORED:
            text += f" {self.detail}"
        elif self.detail:
            text += f" ({self.detail})"
        if dry_run:
            return text + " (dry run)"
        if self.action != UNCHANGED:
            text += f" in {self.seconds * 1000:.0f} ms" if self.seconds < 10 else f" in {self.seconds:.1f} s"
        return text


def resolve(spec) -> dict:
    """The concrete VM a spec asks for: builtin kernels built, paths absolute."""
    kernel = spec.kernel
    if kernel == "builtin:testguest":
        from ..guest.build import build_guest
        kernel = str(build_guest())
    devices = spec.devices or {}
    cmdline = " ".join(filter(None, [spec.cmdline, root_words(devices.get("disks", []))]))
    return {"kernel": kernel, "initrd": spec.initrd, "cmdline": cmdline, "boot": spec.boot,
            "memory_mib": spec.memory_mib, "vcpus": spec.vcpus, "serial_log": spec.serial_log,
            "disks": devices.get("disks", []), "network": devices.get("network", []),
            "virtio_announce": devices.get("virtioAnnounce", "acpi"), "resources": spec.resources}


def root_words(disks: list[dict]) -> str:
    """`root=/dev/vdX ro|rw` for the disk marked root: the n-th disk is Linux's /dev/vd<a+n>."""
    for i, disk in enumerate(disks):
        if disk.get("root"):
            return f"root=/dev/vd{chr(ord('a') + i)} {'ro' if disk.get('readOnly') else 'rw'}"
    return ""


def applied_record(spec, vm: dict, owner, commit: str | None) -> dict:
    return {"name": spec.name, "source": spec.source, "owner": owner.to_dict(), "commit": commit,
            "source_sha256": file_sha256(spec.source),
            "document": spec.document, "spec_hash": spec.spec_hash(), "machine_hash": spec.machine_hash(),
            "shape_hash": spec.shape_hash(), "running": spec.running, "restart_policy": spec.restart_policy, "labels": dict(spec.labels),
            "vm": vm, "snapshots": spec.snapshots, "applied_at": time.time(),
            "set": spec.set_name or spec.name, "replica": spec.replica}


def conflict(spec, applied: dict | None, owner, resolver) -> str:
    """Why `spec` may not take over a VM another source owns ("" when it may): a different source
    always conflicts; another file of the same source only while that file still declares it
    (a spec moved within the repository takes its VM along)."""
    from .owner import Owner
    if applied is None or ("owner" not in applied and applied.get("source") == spec.source):
        return ""                                   # new, or recorded before owners: its own file
    old = Owner.from_record(applied)
    if old == owner or _released(old, owner, spec, resolver):
        return ""
    return (f"conflict: vm/{spec.name} is owned by {old.id}, not {owner.id} "
            "(--force-conflicts takes it over; volt delete frees the name)")


def _released(old, new, spec, resolver) -> bool:
    """Does the old owner's file, in this checkout, no longer declare the VM?"""
    if old.source != new.source:
        return False
    root, _ = resolver.repo(Path(spec.source))
    path = Path(old.file) if old.source is None or root is None else root / old.file
    if not path.is_file():
        return True
    from ..schema import load_specs
    specs, _ = load_specs([str(path)])
    return spec.name not in {s.name for s in specs}


def plan(spec, home: Path, obs: dict | None = None) -> tuple[str, str]:
    """(action, detail) that applying `spec` would take, without doing it; `obs`: the VM as
    observed a moment ago under its lock (wait_while_busy's), else it is observed now."""
    vm_dir = VmDir(home, spec.name)
    applied = vm_dir.read_applied()
    if applied is None:
        return CREATED, "" if spec.running else "stopped"
    if applied.get("machine_hash") != spec.machine_hash():
        return REPLACED, "machine changed: " + ", ".join(machine_changes(applied, spec))
    obs = obs if obs is not None else observe(vm_dir)
    if obs["state"] == COMPLETED and spec.running:          # ran to completion: left alone
        return (UNCHANGED, "") if applied.get("spec_hash") == spec.spec_hash() else (CONFIGURED, "")
    if spec.running and obs["state"] == FAILED:
        return REPLACED, f"was failed: {obs['reason']}"
    if spec.running and obs["state"] not in ALIVE:
        return CONFIGURED, "started"
    if not spec.running and obs["state"] in ALIVE:
        return CONFIGURED, "stopped"
    if applied.get("spec_hash") != spec.spec_hash():
        return CONFIGURED, ""
    return UNCHANGED, ""


def busy_wait_s() -> float:
    return float(os.environ.get("VOLT_BUSY_WAIT_S", BUSY_WAIT_S))


def wait_while_busy(vm_dir: VmDir, spec, warn) -> tuple[str, dict | None]:
    """A live VMM whose API is slow is waited for (bounded, and said), not replaced: "" once it
    answers, else the one-line reason apply gives up with; and the VM as observed then (plan's,
    one API call a VM fewer), None when not observed. A change of machine does not wait: that
    VM is replaced anyway."""
    applied = vm_dir.read_applied()
    if applied is None or applied.get("machine_hash") != spec.machine_hash():
        return "", None
    obs = observe(vm_dir)
    if obs["state"] != BUSY:
        return "", obs
    limit = busy_wait_s()
    warn(f"vm/{spec.name} is busy ({obs['reason']}); waiting up to {limit:g} s")
    deadline = time.monotonic() + limit
    while obs["state"] == BUSY and time.monotonic() < deadline:
        obs = observe(vm_dir, api_timeout=max(0.05, min(1.0, deadline - time.monotonic())))
        if obs["state"] == BUSY:
            time.sleep(0.05)          # connection refused returns at once: do not spin
    if obs["state"] != BUSY:
        return "", obs
    return (f"its VMM (pid {obs['pid']}) is alive but its API has not answered for {limit:g} s; not replacing a live "
            f"VM because it is slow (volt status {spec.name}; volt restore or volt delete to replace it)"), obs


def machine_changes(applied: dict, spec) -> list[str]:
    old = applied.get("vm", {})
    new = {"kernel": spec.kernel, "initrd": spec.initrd, "cmdline": spec.cmdline, "boot": spec.boot,
           "memory_mib": spec.memory_mib, "vcpus": spec.vcpus}
    names = {"memory_mib": "memory"}
    changed = []
    for key, value in new.items():
        if key == "kernel" and value == "builtin:testguest":
            continue
        if old.get(key) != value:
            changed.append(names.get(key, key))
    return changed or ["kernel or device contents"]


def _stderr(message: str) -> None:
    import sys
    sys.stderr.write(f"warning: {message}\n")


def apply_one(spec, home: Path, resolver=None, force_conflicts: bool = False, warn=_stderr) -> Result:
    """Apply one VM's spec (see the module docstring); a conflict with another owner changes nothing."""
    from .owner import Resolver
    resolver = resolver or Resolver()
    owner, commit = resolver.owner(spec.source), resolver.commit(Path(spec.source))
    vm_dir = VmDir(home, spec.name)
    t0 = time.monotonic()
    with vm_dir.lock():
        old = vm_dir.read_applied()
        action, detail, refused = preflight(spec, home, old, owner, resolver, force_conflicts,
                                            wait=lambda: wait_while_busy(vm_dir, spec, warn))
        if refused:
            return Result(spec.name, action, error=refused)
        if action == UNCHANGED:
            _refresh(vm_dir, old, spec, owner, commit)
            return Result(spec.name, UNCHANGED)
        vm = resolve(spec)
        if spec.replica is not None:
            from .clones import own_disks
            vm = own_disks(vm, vm_dir)
        try:
            action, detail = _change(vm_dir, spec, vm, action, detail, applied_record(spec, vm, owner, commit), warn)
        except vmctl.VmStartError as e:
            return Result(spec.name, action, error=str(e) + _rollback(vm_dir, old))
        except OSError as e:                 # ENOSPC, EIO, EROFS writing $VOLT_HOME
            return Result(spec.name, action, error=os_error(e) + _rollback_quietly(vm_dir, old))
    return Result(spec.name, action, detail, time.monotonic() - t0)


def preflight(spec, home: Path, old: dict | None, owner, resolver, force_conflicts: bool,
              wait=None) -> tuple[str, str, str]:
    """(action, detail, why it must not happen: "" when it may), what apply and --dry-run both ask
    first: a conflict with another owner, then (apply only: `wait`) a busy VMM waited for, the plan,
    and a `restore: ID` that cannot be restored."""
    clash = "" if force_conflicts else conflict(spec, old, owner, resolver)
    if clash:
        return UNCHANGED, "", clash
    obs = None
    if wait is not None:
        busy, obs = wait()
        if busy:
            return UNCHANGED, "", busy
    action, detail = plan(spec, home, obs)
    return action, detail, restore_refusal(VmDir(home, spec.name), spec, action, detail)


def _change(vm_dir: VmDir, spec, vm: dict, action: str, detail: str, record: dict, warn) -> tuple[str, str]:
    """Carry out a planned create, replace or configure; the record is written before any start."""
    if action == CREATED:
        vm_dir.ensure()
    elif action == REPLACED:
        vmctl.stop(vm_dir, timeout=5.0)
    write_json(vm_dir.applied, record)
    if action in (CREATED, REPLACED):
        return _start(vm_dir, vm, spec, action, detail, warn) if spec.running else (action, detail)
    if detail == "stopped":
        vmctl.stop(vm_dir)
    elif detail == "started":
        return _start(vm_dir, vm, spec, action, detail, warn)
    else:
        _configure_running(vm_dir, spec)
    return action, detail


def _refresh(vm_dir: VmDir, old: dict | None, spec, owner, commit: str | None) -> None:
    """An unchanged VM applied from a moved or re-cloned checkout, or at a newer commit: the record
    follows (where its file is now, the commit last applied) without counting as a change."""
    if old is None:
        return
    fresh = {"source": spec.source, "owner": owner.to_dict(), "commit": commit}
    if all(old.get(k) == v for k, v in fresh.items()):
        return
    write_json(vm_dir.applied, dict(old, source_sha256=file_sha256(spec.source), **fresh))


def _rollback_quietly(vm_dir: VmDir, old: dict | None) -> str:
    """_rollback when the disk may be what failed: its own failure is said, not raised."""
    try:
        return _rollback(vm_dir, old)
    except (OSError, vmctl.VmStartError) as e:
        return f"; putting back the previous state failed too ({e})"


def restore_refusal(vm_dir: VmDir, spec, action: str, detail: str) -> str:
    """Why a start that `restore: ID` (fallback error, the default for an id) asks for must not
    happen: the snapshot is missing or unusable. "" when it may (or nothing starts)."""
    starts = spec.running and (action in (CREATED, REPLACED) or (action == CONFIGURED and detail == "started"))
    if not starts or spec.snapshots.get("fallback", "boot") != "error":
        return ""
    from .snapshots import pick_restore
    snap, why_not = pick_restore(vm_dir, spec)
    if snap is not None:
        return ""
    return (f"spec.snapshots.restore names {spec.snapshots['restore']}, which cannot be restored "
            f"({why_not or 'no such snapshot'}; volt snapshots list {spec.name}); nothing was changed "
            f"(restore: {{id: {spec.snapshots['restore']}, fallback: boot}} boots fresh instead)")


def _start(vm_dir: VmDir, vm: dict, spec, action: str, detail: str, warn) -> tuple[str, str]:
    """Restore the snapshot the spec asks for when there is a usable one, else cold boot. A clone's
    disks are made first (clones.py); the line says how they were copied."""
    from .clones import copies_said, seed_disks
    from .snapshots import pick_restore
    snap, why_not = pick_restore(vm_dir, spec)
    if snap is not None and spec.snapshots.get("pool"):
        pooled = _from_pool(vm_dir, vm, spec, snap, warn)
        if pooled:
            return RESTORED, pooled
    if snap is not None:
        placeholders = [d["path"] for d in vm.get("disks", []) if d.get("seed") and not os.path.exists(d["path"])]
        try:
            seed_disks(vm, restoring=True)
            vmctl.start(vm_dir, vm, restore_from=snap, clock=spec.snapshots.get("clock", "continue"))
            return RESTORED, _joined(f"from {snap.name}", copies_said(_restored_copies(vm_dir, vm)))
        except vmctl.VmStartError as e:
            for path in placeholders:           # a cold boot seeds them from the spec's disks
                Path(path).unlink(missing_ok=True)
            if spec.snapshots.get("fallback", "boot") == "error":
                raise vmctl.VmStartError(f"the restore of {snap.name} that spec.snapshots.restore names "
                                         f"was refused: {e}") from None
            why_not = f"restore of {snap.name} refused: {e}"
    if why_not:
        warn(f"vm/{spec.name}: {why_not}; cold boot instead")
    made = seed_disks(vm, restoring=False)
    vmctl.start(vm_dir, vm)
    return action, _joined(detail, copies_said(made))


def _from_pool(vm_dir: VmDir, vm: dict, spec, snap: Path, warn) -> str:
    """The restore into a warm VMM of the pool (pool.py), when one is ready: the apply line's detail,
    "" when none was (or it failed: said, and the VM starts the usual way)."""
    from .clones import seed_disks
    from .pool import PoolMiss, restore_into_warm
    try:
        seed_disks(vm, restoring=True)
        if restore_into_warm(vm_dir, vm, snap, spec.snapshots.get("clock", "continue"), vm_dir.read_applied()):
            return f"from {snap.name}, into a warm VMM"
    except PoolMiss as e:
        warn(f"vm/{spec.name}: {e}; starting it the usual way")
    return ""


def _joined(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def _restored_copies(vm_dir: VmDir, vm: dict) -> dict[str, str]:
    """How the VMM put a clone's disks back ({} when the VM has none, or ended already)."""
    if not any(d.get("seed") for d in vm.get("disks", [])):
        return {}
    from ..api.client import ApiClient, ApiError, ApiUnavailable
    try:
        return ApiClient(str(vm_dir.api_sock), timeout=5.0).get("/vm").get("disk_copies") or {}
    except (ApiError, ApiUnavailable):
        return {}


def _configure_running(vm_dir: VmDir, spec) -> None:
    """Hand a running VM the parts of its spec it can take live (the snapshot policy)."""
    from ..api.client import ApiClient, ApiError, ApiUnavailable
    from .vmconfig import policy_config
    policy = policy_config(vm_dir.read_applied() or {}, vm_dir).to_dict()
    try:
        ApiClient(str(vm_dir.api_sock), timeout=5.0).put("/policy", policy)
    except ApiUnavailable:
        pass                      # not running: its next start is given the policy in vm.json
    except ApiError as e:
        raise vmctl.VmStartError(f"the VM refused the new snapshot policy: {e.message}") from None


def _rollback(vm_dir: VmDir, old: dict | None) -> str:
    """Put back what was there before a failed start; say what happened."""
    if old is None:
        vm_dir.remove()
        return "; nothing was created"
    write_json(vm_dir.applied, old)
    if observe(vm_dir)["state"] in ALIVE:
        return "; the VM keeps running as before"
    if old.get("running", True):
        try:
            vmctl.start(vm_dir, old["vm"])
            return "; the previous VM was started again"
        except vmctl.VmStartError as e:
            return f"; the previous VM could not be restarted either: {e}"
    return "; the previous spec is kept"


def delete(name: str, home: Path, purge: bool = False, reason: str = "") -> Result:
    """Stop and remove a VM; with `purge` its snapshots too, also when the VM was deleted before
    (snapshots outlive their VM). `reason`: why, for the line (a clone no longer declared)."""
    from .snapshots import catalogue
    vm_dir = VmDir(home, name)
    t0 = time.monotonic()
    with vm_dir.lock():
        if not vm_dir.exists():
            if purge and catalogue(home).purge(name):
                return Result(name, PURGED, "the VM was already deleted", time.monotonic() - t0)
            return Result(name, DELETED, error="no such VM")
        vmctl.stop(vm_dir, timeout=5.0)
        vm_dir.remove()
        if purge:
            catalogue(home).purge(name)
    return Result(name, DELETED, _joined(reason, "snapshots purged" if purge else ""), time.monotonic() - t0)


def prunable(specs, home: Path, scopes) -> list[str]:
    """VMs owned under one of the applied paths' scopes (owner.Scope) that they no longer declare."""
    from .owner import Owner
    wanted = {s.name for s in specs}
    out = []
    for name in all_vm_names(home):
        if name in wanted:
            continue
        owner = Owner.from_record(VmDir(home, name).read_applied() or {})
        if any(scope.covers(owner) for scope in scopes):
            out.append(name)
    return out
