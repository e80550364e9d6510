"""The machine (vCPUs, memory) and its boot source: what a cold boot needs besides devices."""

from __future__ import annotations

from .fields import Reader, Section, VmmConfigError

MEMORY_MIN_MIB = 16
VCPU_LIMIT = 254                 # x2APIC ids below the broadcast id: one IOAPIC, one MADT
CMDLINE_LIMIT = 2047             # x86 COMMAND_LINE_SIZE less its NUL (as the spec's schema)
BOOT_PROTOCOLS = (None, "pvh", "linux64")


class MachineConfig(Section):
    """`track_dirty_pages`: log which pages change (KVM's dirty log and the devices' writes), so
    a snapshot can be a diff on the one before (vmm/dirty.py); off, the guest never pays for it.
    `compress_snapshots`: a full snapshot's memory is kept compressed (snapshot/compressed.py)."""

    __slots__ = ("vcpus", "memory_mib", "track_dirty_pages", "compress_snapshots")

    def __init__(self, vcpus: int = 1, memory_mib: int = 128, track_dirty_pages: bool = False,
                 compress_snapshots: bool = False) -> None:
        self.vcpus, self.memory_mib, self.track_dirty_pages = vcpus, memory_mib, track_dirty_pages
        self.compress_snapshots = compress_snapshots

    @classmethod
    def from_dict(cls, data: object, where: str = "machine", labels: dict | None = None) -> "MachineConfig":
        r = Reader(data, where, cls.__slots__, labels)
        memory = r.get("memory_mib", 128)
        if type(memory) is int and memory <= 0:
            raise VmmConfigError(f"{r.name('memory_mib')} must be a positive number of MiB, not {memory}")
        if type(memory) is int and memory < MEMORY_MIN_MIB:
            raise VmmConfigError(f"{r.name('memory_mib')} {memory} MiB is too small (at least {MEMORY_MIN_MIB} MiB)")
        vcpus = r.get("vcpus", 1)
        if type(vcpus) is int and vcpus <= 0:
            raise VmmConfigError(f"{r.name('vcpus')} must be at least 1, not {vcpus}")
        return cls(r.int("vcpus", 1, low=1), r.int("memory_mib", 128, low=MEMORY_MIN_MIB),
                   r.flag("track_dirty_pages", False), r.flag("compress_snapshots", False))

    def check_host(self, host_mem_mib: int, max_vcpus: int) -> None:
        """Refuse sizes this host cannot give (checked when the VM is built, on the host it runs on)."""
        if host_mem_mib and self.memory_mib > host_mem_mib:
            raise VmmConfigError(f"memory of {self.memory_mib} MiB "
                                 f"exceeds this host's memory ({host_mem_mib} MiB)")
        limit = min(max_vcpus, VCPU_LIMIT) if max_vcpus else VCPU_LIMIT
        if self.vcpus > limit:
            raise VmmConfigError(f"{self.vcpus} vCPUs: that exceeds this host's limit ({limit})")


class BootSourceConfig(Section):
    __slots__ = ("kernel", "initrd", "cmdline", "boot")

    def __init__(self, kernel: str, initrd: str | None = None, cmdline: str = "", boot: str | None = None) -> None:
        self.kernel, self.initrd, self.cmdline, self.boot = kernel, initrd, cmdline, boot

    @classmethod
    def from_dict(cls, data: object, where: str = "boot_source", labels: dict | None = None) -> "BootSourceConfig":
        r = Reader(data, where, cls.__slots__, labels)
        cmdline = r.text("cmdline", "", empty=True)
        if len(cmdline) > CMDLINE_LIMIT or any(ord(c) < 32 or ord(c) == 127 for c in cmdline):
            raise VmmConfigError(f"{r.name('cmdline')} must be at most {CMDLINE_LIMIT} characters without "
                                 f"NUL, newlines, tabs or other control characters")
        boot = r.get("boot", None)
        if boot not in BOOT_PROTOCOLS:
            raise VmmConfigError(f"{r.name('boot')} must be pvh or linux64, not {boot!r}")
        return cls(r.text("kernel"), r.optional_text("initrd"), cmdline, boot)


def host_memory_mib(meminfo: str = "/proc/meminfo") -> int:
    """MemTotal in MiB (0 when unknown: then no memory limit is enforced here)."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0
