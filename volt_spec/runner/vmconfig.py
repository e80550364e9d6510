"""An applied VM -> the VmmConfig its VMM is started with (written once, as run/vm.json).

The one place the spec's vocabulary (camelCase, durations as text, `virtioAnnounce`) becomes
the VMM's: the VMM reads nothing else of the spec.
"""

from __future__ import annotations

from pathlib import Path

from ..schema.sizes import duration_seconds
from ..vmm.config import (ApiConfig, BootSourceConfig, DriveConfig, MachineConfig, NetConfig, PolicyConfig,
                          RestoreConfig, RetainConfig, TriggerConfig, VirtioConfig, VmmConfig)
from .home import VmDir


def vmm_config(vm: dict, vm_dir: VmDir, restore_from: Path | None = None, clock: str = "continue",
               applied: dict | None = None) -> VmmConfig:
    """The VMM's whole input for a resolved VM (runner.apply.resolve): a boot, or a restore whose
    disks and NICs go where the applied spec says, never where the snapshot's state.json says (a
    snapshot is untrusted input: its paths could name any host file), with the spec's MACs (a
    clone's own)."""
    disks, nics = vm.get("disks", []), vm.get("network", [])
    config = VmmConfig(
        name=vm_dir.name,
        machine=MachineConfig(vcpus=vm["vcpus"], memory_mib=vm["memory_mib"],
                              track_dirty_pages=full_every(applied) is not None,
                              compress_snapshots=compression(applied) == "zstd"),
        drives=[DriveConfig(d["name"], d["path"], bool(d.get("readOnly"))) for d in disks],
        network=[NetConfig(n["name"], n["tap"], n.get("mac")) for n in nics],
        virtio=VirtioConfig(announce=vm.get("virtio_announce", "acpi")),
        api=ApiConfig(str(vm_dir.api_sock), str(vm_dir.snapshots)),
        policy=policy_config(applied, vm_dir) if applied is not None else None)
    if restore_from is not None:
        config.restore = RestoreConfig(str(restore_from), clock, disk_overrides={d["name"]: d["path"] for d in disks},
                                       tap_overrides={n["name"]: n["tap"] for n in nics},
                                       mac_overrides={n["name"]: n["mac"] for n in nics if n.get("mac")})
    else:
        config.boot_source = BootSourceConfig(vm["kernel"], vm.get("initrd"), vm["cmdline"], vm.get("boot"))
    return config


def full_every(applied: dict | None) -> int | None:
    """snapshots.incremental.fullEvery, None when the VM's snapshots are all full ones."""
    incremental = ((applied or {}).get("snapshots") or {}).get("incremental")
    return incremental.get("fullEvery") if isinstance(incremental, dict) else None


def compression(applied: dict | None) -> str | None:
    """snapshots.compress: "zstd" keeps full snapshots' memory compressed at rest (None: not)."""
    return ((applied or {}).get("snapshots") or {}).get("compress")


def policy_config(applied: dict, vm_dir: VmDir) -> PolicyConfig:
    """The spec's `snapshots` section (schema/model.py: as written, defaults filled in) as the
    policy the VMM carries out by itself, with where and for whom."""
    snaps = applied.get("snapshots") or {}
    triggers = [trigger_config(t) for t in snaps.get("triggers", [])]
    retain = snaps.get("retain") or {}
    max_age = retain.get("maxAge")
    return PolicyConfig(vm=vm_dir.name, snapshot_dir=str(vm_dir.snapshots), machine_hash=applied.get("machine_hash"),
                        shape_hash=applied.get("shape_hash"),
                        spec=applied.get("document"), clock=snaps.get("clock", "continue"), triggers=triggers,
                        retain=RetainConfig(retain.get("count"), duration_seconds(max_age) if max_age else None),
                        full_every=full_every(applied))


def trigger_config(t: dict) -> TriggerConfig:
    kind = t["trigger"]
    if kind == "interval":
        return TriggerConfig(kind, every_s=duration_seconds(t["every"]))
    if kind == "ready":
        return TriggerConfig(kind, marker=t.get("marker"))
    if kind == "console":
        return TriggerConfig(kind, match=t.get("match"))
    return TriggerConfig(kind)
