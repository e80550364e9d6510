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

from ..fsutil import os_error
from . import vmctl
from .home import VmDir, all_vm_names, write_json
from .observe import ALIVE, BUSY, FAILED, observe

CREATED, UNCHANGED, CONFIGURED, REPLACED, RESTORED, DELETED = (
    "created", "unchanged", "configured", "replaced", "restored", "deleted")
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


def file_sha256(path: str) -> str | None:
    import hashlib
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def applied_record(spec, vm: dict, applied_from: list[str]) -> dict:
    return {"name": spec.name, "source": spec.source, "applied_from": applied_from,
            "source_sha256": file_sha256(spec.source),
            "document": spec.document, "spec_hash": spec.spec_hash(), "machine_hash": spec.machine_hash(),
            "running": spec.running, "labels": dict(spec.labels), "vm": vm,
            "snapshots": spec.snapshots, "applied_at": time.time()}


def plan(spec, home: Path) -> tuple[str, str]:
    """(action, detail) that applying `spec` would take, without doing it."""
    vm_dir = VmDir(home, spec.name)
    applied = vm_dir.read_applied()
    if applied is None:
        return CREATED, "" if spec.running else "stopped"
    if applied.get("machine_hash") != spec.machine_hash():
        return REPLACED, "machine changed: " + ", ".join(machine_changes(applied, spec))
    obs = observe(vm_dir)
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


def wait_while_busy(vm_dir: VmDir, spec, warn) -> str:
    """A live VMM whose API is slow is waited for (bounded, and said), not replaced: "" once it
    answers, else the one-line reason apply gives up with. A change of machine does not wait:
    that VM is replaced anyway."""
    applied = vm_dir.read_applied()
    if applied is None or applied.get("machine_hash") != spec.machine_hash():
        return ""
    obs = observe(vm_dir)
    if obs["state"] != BUSY:
        return ""
    limit = busy_wait_s()
    warn(f"vm/{spec.name} is busy ({obs['reason']}); waiting up to {limit:g} s")
    deadline = time.monotonic() + limit
    while obs["state"] == BUSY and time.monotonic() < deadline:
        obs = observe(vm_dir, api_timeout=max(0.05, min(1.0, deadline - time.monotonic())))
        if obs["state"] == BUSY:
            time.sleep(0.05)          # connection refused returns at once: do not spin
    if obs["state"] != BUSY:
        return ""
    return (f"its VMM (pid {obs['pid']}) is alive but its API has not answered for {limit:g} s; not replacing a live "
            f"VM because it is slow (volt status {spec.name}; volt restore or volt delete to replace it)")


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


def apply_one(spec, home: Path, applied_from: list[str], warn=_stderr) -> Result:
    vm_dir = VmDir(home, spec.name)
    t0 = time.monotonic()
    with vm_dir.lock():
        busy = wait_while_busy(vm_dir, spec, warn)
        if busy:
            return Result(spec.name, UNCHANGED, error=busy)
        action, detail = plan(spec, home)
        if action == UNCHANGED:
            return Result(spec.name, UNCHANGED)
        vm = resolve(spec)
        old = vm_dir.read_applied()
        try:
            if action == CREATED:
                vm_dir.ensure()
                write_json(vm_dir.applied, applied_record(spec, vm, applied_from))
                if spec.running:
                    action, detail = _start(vm_dir, vm, spec, action, detail, warn)
            elif action == REPLACED:
                vmctl.stop(vm_dir, timeout=5.0)
                write_json(vm_dir.applied, applied_record(spec, vm, applied_from))
                if spec.running:
                    action, detail = _start(vm_dir, vm, spec, action, detail, warn)
            else:  # CONFIGURED
                write_json(vm_dir.applied, applied_record(spec, vm, applied_from))
                if detail == "stopped":
                    vmctl.stop(vm_dir)
                elif detail == "started":
                    action, detail = _start(vm_dir, vm, spec, action, detail, warn)
                else:
                    _configure_running(vm_dir, spec)
        except vmctl.VmStartError as e:
            return Result(spec.name, action, error=str(e) + _rollback(vm_dir, old))
        except OSError as e:                 # ENOSPC, EIO, EROFS writing $VOLT_HOME
            return Result(spec.name, action, error=os_error(e) + _rollback_quietly(vm_dir, old))
    return Result(spec.name, action, detail, time.monotonic() - t0)


def _rollback_quietly(vm_dir: VmDir, old: dict | None) -> str:
    """_rollback when the disk may be what failed: its own failure is said, not raised."""
    try:
        return _rollback(vm_dir, old)
    except (OSError, vmctl.VmStartError) as e:
        return f"; putting back the previous state failed too ({e})"


def _start(vm_dir: VmDir, vm: dict, spec, action: str, detail: str, warn) -> tuple[str, str]:
    """Restore the snapshot the spec asks for when there is a usable one, else cold boot."""
    from .snapshots import pick_restore
    snap, why_not = pick_restore(vm_dir, spec)
    if snap is not None:
        try:
            vmctl.start(vm_dir, vm, restore_from=snap, clock=spec.snapshots.get("clock", "continue"))
            return RESTORED, f"from {snap.name}"
        except vmctl.VmStartError as e:
            why_not = f"restore of {snap.name} refused: {e}"
    if why_not:
        warn(f"vm/{spec.name}: {why_not}; cold boot instead")
    vmctl.start(vm_dir, vm)
    return action, detail


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


def delete(name: str, home: Path, purge: bool = False) -> Result:
    vm_dir = VmDir(home, name)
    t0 = time.monotonic()
    with vm_dir.lock():
        if not vm_dir.exists():
            return Result(name, DELETED, error="no such VM")
        vmctl.stop(vm_dir, timeout=5.0)
        vm_dir.remove()
        if purge:
            import shutil
            shutil.rmtree(vm_dir.snapshots, ignore_errors=True)
    return Result(name, DELETED, "snapshots purged" if purge else "", time.monotonic() - t0)


def prunable(specs, home: Path, applied_from: list[str]) -> list[str]:
    """VMs applied earlier from one of these paths that the paths no longer declare."""
    wanted = {s.name for s in specs}
    out = []
    for name in all_vm_names(home):
        if name in wanted:
            continue
        rec = VmDir(home, name).read_applied() or {}
        if set(rec.get("applied_from", [])) & set(applied_from):
            out.append(name)
    return out
