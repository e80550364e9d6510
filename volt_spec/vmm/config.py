"""What one VM is made of, as given on volt-vmm's command line (or later, its API)."""

from __future__ import annotations


class VmmConfigError(ValueError):
    """A bad VM configuration: the message is the one line the user sees."""


class VmConfig:
    __slots__ = ("kernel", "initrd", "cmdline", "memory_mib", "vcpus", "boot")

    def __init__(self, kernel: str, initrd: str | None = None, cmdline: str = "",
                 memory_mib: int = 128, vcpus: int = 1, boot: str | None = None) -> None:
        self.kernel, self.initrd, self.cmdline = kernel, initrd, cmdline
        self.memory_mib, self.vcpus, self.boot = memory_mib, vcpus, boot

    def check(self, host_mem_mib: int, max_vcpus: int) -> None:
        """Refuse sizes the host cannot give: one line per problem, first one raised."""
        if self.memory_mib <= 0:
            raise VmmConfigError(f"--memory must be a positive number of MiB, not {self.memory_mib}")
        if self.memory_mib < 16:
            raise VmmConfigError(f"--memory {self.memory_mib} MiB is too small (at least 16 MiB)")
        if host_mem_mib and self.memory_mib > host_mem_mib:
            raise VmmConfigError(
                f"--memory {self.memory_mib} MiB exceeds this host's memory ({host_mem_mib} MiB)")
        if self.vcpus <= 0:
            raise VmmConfigError(f"--vcpus must be at least 1, not {self.vcpus}")
        limit = min(max_vcpus, 254)
        if self.vcpus > limit:
            raise VmmConfigError(f"--vcpus {self.vcpus} exceeds this host's limit ({limit})")
        if self.boot not in (None, "pvh", "linux64"):
            raise VmmConfigError(f"--boot must be pvh or linux64, not {self.boot!r}")


def host_memory_mib(meminfo: str = "/proc/meminfo") -> int:
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0
