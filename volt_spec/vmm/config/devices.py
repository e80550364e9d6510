"""The VM's virtio devices: drives, network interfaces, and how they are announced and served."""

from __future__ import annotations

from .fields import Reader, Section, VmmConfigError, path_text

_LABEL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_TAP = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_HEX = frozenset("0123456789abcdefABCDEF")


def device_name(value: object, what: str) -> str:
    """A drive or NIC name is a DNS label (the spec's rule): it names files in a snapshot."""
    if not (isinstance(value, str) and 0 < len(value) <= 63 and set(value) <= _LABEL
            and value[0] != "-" and value[-1] != "-"):
        raise VmmConfigError(f"{what}: {value!r} is not a valid name (a DNS label: a-z, 0-9, '-')")
    return value


def tap_name(value: object, what: str) -> str:
    if not (isinstance(value, str) and 0 < len(value) <= 15 and set(value) <= _TAP):
        raise VmmConfigError(f"{what}: {value!r} is not a tap device name (1-15 characters of A-Za-z0-9_.-)")
    return value


def mac_text(value: object, what: str) -> str:
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) != 6 or not all(len(p) == 2 and set(p) <= _HEX for p in parts):
        raise VmmConfigError(f"{what}: MAC address {value!r}: expected six hex pairs like 52:54:00:12:34:56")
    return value.lower()


class DriveConfig(Section):
    """A virtio-blk disk backed by a host file (size a multiple of 512)."""

    __slots__ = ("name", "path", "read_only")

    def __init__(self, name: str, path: str, read_only: bool = False) -> None:
        self.name, self.path, self.read_only = name, path, read_only

    @classmethod
    def from_dict(cls, data: object, where: str) -> "DriveConfig":
        r = Reader(data, where, cls.__slots__)
        name = device_name(r.get("name"), f"{where}.name")
        return cls(name, path_text(r.text("path"), f"{where}.path"), r.flag("read_only", False))


class NetConfig(Section):
    """A virtio-net NIC on a host tap; no MAC means one derived from the VM's and NIC's names."""

    __slots__ = ("name", "tap", "mac")

    def __init__(self, name: str, tap: str, mac: str | None = None) -> None:
        self.name, self.tap, self.mac = name, tap, mac

    @classmethod
    def from_dict(cls, data: object, where: str) -> "NetConfig":
        r = Reader(data, where, cls.__slots__)
        mac = r.get("mac", None)
        return cls(device_name(r.get("name"), f"{where}.name"), tap_name(r.get("tap"), f"{where}.tap"),
                   None if mac is None else mac_text(mac, f"{where}.mac"))

    def mac_bytes(self, vm_name: str) -> bytes:
        if self.mac is None:
            from ...devices.virtio.tap import mac_for
            return mac_for(f"{vm_name}/{self.name}")
        return bytes.fromhex(self.mac.replace(":", ""))


class VirtioConfig(Section):
    """How the devices are announced (ACPI DSDT or kernel command line) and served: KVM_IOEVENTFD
    and KVM_IRQFD, or MMIO exits and KVM_IRQ_LINE (slower; for comparison)."""

    __slots__ = ("announce", "ioeventfd", "irqfd")

    def __init__(self, announce: str = "acpi", ioeventfd: bool = True, irqfd: bool = True) -> None:
        self.announce, self.ioeventfd, self.irqfd = announce, ioeventfd, irqfd

    @classmethod
    def from_dict(cls, data: object, where: str = "virtio") -> "VirtioConfig":
        r = Reader(data, where, cls.__slots__)
        return cls(r.choice("announce", ("acpi", "cmdline"), "acpi"), r.flag("ioeventfd", True),
                   r.flag("irqfd", True))


def unique_names(items: list, what: str) -> list:
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise VmmConfigError(f"{what}: the name {item.name!r} is used twice")
        seen.add(item.name)
    return items
