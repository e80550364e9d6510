"""`HostLimits`: how many vCPUs and how much memory this host can give one VM."""

from __future__ import annotations

from dataclasses import dataclass

VCPU_CEILING = 254      # the VMM's own limit (vmm/config/machine.py: one IOAPIC/MADT, APIC ids < 255)


@dataclass(frozen=True)
class HostLimits:
    """Per-VM limits checked by `volt validate`; mem_mib 0 means unknown (not checked)."""

    max_vcpus: int
    mem_mib: int

    @classmethod
    def detect(cls) -> "HostLimits":
        """KVM's per-VM vCPU limit and MemTotal from /proc/meminfo.

        Without a usable /dev/kvm the vCPU limit falls back to the VMM's ceiling (254): KVM's own
        limit (KVM_CAP_MAX_VCPUS, 1024+ on current kernels) does not depend on the CPU count
        because vCPUs may be overcommitted, so os.cpu_count() would reject specs the VMM can run;
        a spec written for another host is then only checked against the format's own bounds.
        """
        from ..vmm.config import host_memory_mib
        return cls(max_vcpus=min(_kvm_max_vcpus(), VCPU_CEILING), mem_mib=host_memory_mib())

    @classmethod
    def unlimited(cls) -> "HostLimits":
        """No host checks beyond the format's bounds (for specs meant for another host)."""
        return cls(max_vcpus=VCPU_CEILING, mem_mib=0)


def _kvm_max_vcpus() -> int:
    try:
        from ..kvm.system import Kvm
        kvm = Kvm()
    except Exception:        # no /dev/kvm, no permission, wrong API version: see detect()
        return VCPU_CEILING
    try:
        return kvm.max_vcpus()
    except Exception:
        return VCPU_CEILING
    finally:
        kvm.close()
