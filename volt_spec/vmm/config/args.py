"""volt-vmm's command-line flags -> the same VmmConfig vm.json gives (`--config` reads that directly)."""

from __future__ import annotations

from . import (ApiConfig, BootSourceConfig, DriveConfig, MachineConfig, NetConfig, PolicyConfig, RestoreConfig,
               VirtioConfig, VmmConfig, VmmConfigError, device_name, load, unique_names)

MACHINE_LABELS = {"memory_mib": "--memory", "vcpus": "--vcpus", "track_dirty_pages": "--track-dirty-pages",
                  "compress_snapshots": "--compress-snapshots"}
BOOT_LABELS = {"kernel": "--kernel", "initrd": "--initrd", "cmdline": "--cmdline", "boot": "--boot"}
RESTORE_LABELS = {"snapshot_dir": "--restore", "clock": "--clock", "disk_overrides": "--disk-override",
                  "tap_overrides": "--tap-override", "mac_overrides": "--mac-override"}
API_LABELS = {"socket": "--api-sock", "state_dir": "--state-dir"}
PROCESS_FLAGS = {"jail", "seccomp", "seccomp_selftest", "config", "help", "version", "snapshot"}


def config_from_args(opts: dict) -> VmmConfig:
    """The VmmConfig the parsed flags describe (main.parse_args' dict)."""
    if "config" in opts:
        mixed = sorted(f"--{k.replace('_', '-')}" for k in opts if k not in PROCESS_FLAGS)
        if mixed:
            raise VmmConfigError(f"--config holds the whole VM; it cannot be combined with {', '.join(mixed)}")
        return load(opts["config"])
    if "kernel" in opts and "restore" in opts:
        raise VmmConfigError("--kernel (boot) and --restore (from a snapshot) exclude each other")
    name = device_name(opts.get("name", "vm"), "--name")
    return VmmConfig(
        name=name,
        machine=MachineConfig.from_dict({"vcpus": opts.get("vcpus", 1), "memory_mib": opts.get("memory", 128),
                                         "track_dirty_pages": bool(opts.get("track_dirty_pages")),
                                         "compress_snapshots": bool(opts.get("compress_snapshots"))},
                                        labels=MACHINE_LABELS),
        boot_source=_boot_source(opts),
        drives=unique_names([parse_drive(t, i) for i, t in enumerate(opts.get("disk", []))], "--disk"),
        network=unique_names([parse_net(t, i) for i, t in enumerate(opts.get("net", []))], "--net"),
        virtio=VirtioConfig("cmdline" if opts.get("virtio_cmdline") else "acpi",
                            not opts.get("no_ioeventfd"), not opts.get("no_irqfd")),
        restore=_restore(opts), policy=_policy(opts.get("policy")), api=_api(opts),
        stop_timeout=opts.get("stop_timeout", 10.0), warm=bool(opts.get("warm")))


def _boot_source(opts: dict) -> BootSourceConfig | None:
    if "kernel" not in opts:
        return None
    fields = {"kernel": opts["kernel"], "initrd": opts.get("initrd"), "cmdline": opts.get("cmdline", ""),
              "boot": opts.get("boot")}
    return BootSourceConfig.from_dict(fields, labels=BOOT_LABELS)


def _restore(opts: dict) -> RestoreConfig | None:
    if "restore" not in opts:
        return None
    fields = {"snapshot_dir": opts["restore"], "clock": opts.get("clock", "continue"),
              "verify": bool(opts.get("verify")),
              "disk_overrides": pairs(opts.get("disk_override", []), "--disk-override"),
              "tap_overrides": pairs(opts.get("tap_override", []), "--tap-override"),
              "mac_overrides": pairs(opts.get("mac_override", []), "--mac-override")}
    return RestoreConfig.from_dict(fields, labels=RESTORE_LABELS)


def _api(opts: dict) -> ApiConfig | None:
    if "api_sock" not in opts:
        return None
    return ApiConfig.from_dict({"socket": opts["api_sock"], "state_dir": opts.get("state_dir")}, labels=API_LABELS)


def _policy(path: str | None) -> PolicyConfig | None:
    if path is None:
        return None
    from ...snapshot.fastjson import loads
    try:
        with open(path, "rb") as f:
            data = loads(f.read(1 << 22))
    except OSError as e:
        raise VmmConfigError(f"--policy {path}: {e.strerror}") from None
    except ValueError as e:
        raise VmmConfigError(f"--policy {path}: not JSON ({e})") from None
    try:
        return PolicyConfig.from_dict(data)
    except VmmConfigError as e:
        raise VmmConfigError(f"--policy {path}: {e}") from None


def pairs(items: list[str], option: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise VmmConfigError(f"{option} {item}: expected NAME=VALUE")
        out[key] = value
    return out


def parse_drive(text: str, index: int) -> DriveConfig:
    """--disk PATH[,ro][,name=NAME]"""
    path, *opts = text.split(",")
    fields: dict = {"name": f"disk{index}", "path": path, "read_only": False}
    for opt in opts:
        if opt in ("ro", "readonly"):
            fields["read_only"] = True
        elif opt.startswith("name="):
            fields["name"] = opt[5:]
        elif opt:
            raise VmmConfigError(f"--disk {text}: unknown option {opt!r} (ro, name=NAME)")
    return DriveConfig.from_dict(fields, f"--disk {text}")


def parse_net(text: str, index: int) -> NetConfig:
    """--net tap=NAME[,mac=xx:xx:xx:xx:xx:xx][,name=NAME]"""
    fields = dict(opt.split("=", 1) if "=" in opt else (opt, "") for opt in text.split(",") if opt)
    if set(fields) - {"tap", "mac", "name"} or "tap" not in fields:
        raise VmmConfigError(f"--net {text}: expected tap=NAME[,mac=MAC][,name=NAME]")
    fields.setdefault("name", f"net{index}")
    fields["name"] = fields["name"] or f"net{index}"
    if not fields.get("mac"):
        fields.pop("mac", None)
    return NetConfig.from_dict(fields, f"--net {text}")
