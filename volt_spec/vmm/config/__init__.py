"""VmmConfig: everything one VMM is asked to do, as one strict, typed tree (Firecracker's vmm_config).

The runner writes `VmmConfig.to_dict()` to vm.json and starts `volt-vmm --config vm.json`; the
command-line flags (args.py) and the pre-boot API build the same tree. This package is the only
place the VMM's inputs are checked; the host's limits are checked when the VM is built.
"""

from __future__ import annotations

from .devices import DriveConfig, NetConfig, VirtioConfig, device_name, mac_text, tap_name, unique_names
from .fields import Reader, Section, VmmConfigError, path_text
from .machine import BootSourceConfig, MachineConfig, host_memory_mib
from .policy import PolicyConfig, RetainConfig, TriggerConfig

__all__ = ["ApiConfig", "BootSourceConfig", "DriveConfig", "MachineConfig", "NetConfig", "PolicyConfig",
           "RestoreConfig", "RetainConfig", "TriggerConfig", "VirtioConfig", "VmmConfig", "VmmConfigError",
           "host_memory_mib", "load"]


class RestoreConfig(Section):
    """Start from a snapshot: its directory, the guest clock, and where its disks and NICs go now
    (by device name; a snapshot's own paths are untrusted and each clone needs its own disk)."""

    __slots__ = ("snapshot_dir", "clock", "verify", "disk_overrides", "tap_overrides", "mac_overrides")

    def __init__(self, snapshot_dir: str, clock: str = "continue", verify: bool = False,
                 disk_overrides: dict | None = None, tap_overrides: dict | None = None,
                 mac_overrides: dict | None = None) -> None:
        self.snapshot_dir, self.clock, self.verify = snapshot_dir, clock, verify
        self.disk_overrides, self.tap_overrides = disk_overrides or {}, tap_overrides or {}
        self.mac_overrides = mac_overrides or {}

    @classmethod
    def from_dict(cls, data: object, where: str = "restore", labels: dict | None = None) -> "RestoreConfig":
        r = Reader(data, where, cls.__slots__, labels)
        disks = _overrides(r.get("disk_overrides", {}), r.name("disk_overrides"), path_text)
        taps = _overrides(r.get("tap_overrides", {}), r.name("tap_overrides"), tap_name)
        macs = _overrides(r.get("mac_overrides", {}), r.name("mac_overrides"), mac_text)
        return cls(path_text(r.text("snapshot_dir"), r.name("snapshot_dir")),
                   r.choice("clock", ("continue", "realtime"), "continue"), r.flag("verify", False), disks, taps,
                   macs)


def _overrides(value: object, where: str, check) -> dict[str, str]:
    if not isinstance(value, dict):
        raise VmmConfigError(f"{where} must be an object of NAME: VALUE")
    return {device_name(k, where): check(v, f"{where} {k}") for k, v in value.items()}


class ApiConfig(Section):
    """The HTTP API's Unix socket, and the only directory it may write or load snapshots in."""

    __slots__ = ("socket", "state_dir")

    def __init__(self, socket: str, state_dir: str) -> None:
        self.socket, self.state_dir = socket, state_dir

    @classmethod
    def from_dict(cls, data: object, where: str = "api", labels: dict | None = None) -> "ApiConfig":
        import os
        r = Reader(data, where, cls.__slots__, labels)
        socket = path_text(r.text("socket"), r.name("socket"))
        state = r.optional_text("state_dir")
        return cls(socket, path_text(state, r.name("state_dir")) if state else os.path.dirname(socket))


class VmmConfig(Section):
    """A cold boot (boot_source) or a restore (restore), or neither: wait for the API to configure one
    (`warm`: with the VM of `machine`'s shape made ahead, for a snapshot load by fds; vmm/warm.py)."""

    __slots__ = ("name", "machine", "boot_source", "drives", "network", "virtio", "restore", "policy",
                 "api", "stop_timeout", "warm")

    def __init__(self, name: str = "vm", machine: MachineConfig | None = None,
                 boot_source: BootSourceConfig | None = None, drives: list | None = None,
                 network: list | None = None, virtio: VirtioConfig | None = None,
                 restore: RestoreConfig | None = None, policy: PolicyConfig | None = None,
                 api: ApiConfig | None = None, stop_timeout: float = 10.0, warm: bool = False) -> None:
        self.name, self.machine, self.boot_source = name, machine or MachineConfig(), boot_source
        self.drives, self.network, self.virtio = drives or [], network or [], virtio or VirtioConfig()
        self.restore, self.policy, self.api, self.stop_timeout = restore, policy, api, stop_timeout
        self.warm = warm
        if warm and (boot_source is not None or restore is not None or drives or network or api is None):
            raise VmmConfigError("a warm VMM (--warm) is configured by its shape (--vcpus, --memory) and --api-sock "
                                 "alone: its VM comes from a snapshot load")

    @classmethod
    def from_dict(cls, data: object, where: str = "vm.json") -> "VmmConfig":
        r = Reader(data, where, cls.__slots__)
        if r.get("boot_source", None) is not None and r.get("restore", None) is not None:
            raise VmmConfigError(f"{where}: boot_source and restore exclude each other")
        drives = [DriveConfig.from_dict(d, f"drives[{i}]") for i, d in enumerate(r.items("drives", "drives"))]
        nets = [NetConfig.from_dict(n, f"network[{i}]") for i, n in enumerate(r.items("network", "network"))]
        return cls(
            name=device_name(r.get("name", "vm"), f"{where}: name"),
            machine=MachineConfig.from_dict(r.get("machine", {})),
            boot_source=_optional(BootSourceConfig, r.get("boot_source", None)),
            drives=unique_names(drives, "drives"), network=unique_names(nets, "network"),
            virtio=VirtioConfig.from_dict(r.get("virtio", {})),
            restore=_optional(RestoreConfig, r.get("restore", None)),
            policy=_optional(PolicyConfig, r.get("policy", None)),
            api=_optional(ApiConfig, r.get("api", None)),
            stop_timeout=r.number("stop_timeout", 10.0), warm=r.flag("warm", False))

    def to_dict(self) -> dict:
        out = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, list):
                value = [v.to_dict() for v in value]
            elif isinstance(value, Section):
                value = value.to_dict()
            out[name] = value
        return out


def _optional(cls, data: object):
    return None if data is None else cls.from_dict(data)


def load(path: str) -> VmmConfig:
    """vm.json -> VmmConfig (parsed without importing `json`: this is on the boot path)."""
    from ...snapshot.fastjson import loads
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 24)
        data = loads(raw)
    except OSError as e:
        raise VmmConfigError(f"--config {path}: {e.strerror}") from None
    except ValueError as e:
        raise VmmConfigError(f"--config {path}: not JSON ({e})") from None
    return VmmConfig.from_dict(data, path)
