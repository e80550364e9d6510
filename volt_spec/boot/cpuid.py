"""Per-vCPU CPUID from KVM_GET_SUPPORTED_CPUID: APIC ids, x2APIC, TSC-deadline, hypervisor bit.

On PVM the guest sees the host's CPUID whatever we set, but KVM consults its own
copy (e.g. to allow x2APIC and the TSC-deadline MSR), so these bits matter on both.
"""

from __future__ import annotations

import ctypes

LEAF1_ECX_X2APIC = 1 << 21
LEAF1_ECX_TSC_DEADLINE = 1 << 24
LEAF1_ECX_HYPERVISOR = 1 << 31
LEAF1_EDX_APIC = 1 << 9


def vcpu_cpuid(supported: ctypes.Structure, index: int, num_vcpus: int) -> ctypes.Structure:
    """A copy of `supported` specialised for vCPU `index` (its APIC id is its index)."""
    cpuid = type(supported)()
    ctypes.memmove(ctypes.addressof(cpuid), ctypes.addressof(supported), ctypes.sizeof(supported))
    for i in range(cpuid.nent):
        e = cpuid.entries[i]
        if e.function == 1:
            e.ebx = (e.ebx & 0x0000FFFF) | (index << 24) | (min(num_vcpus, 255) << 16)
            e.ecx |= LEAF1_ECX_X2APIC | LEAF1_ECX_TSC_DEADLINE | LEAF1_ECX_HYPERVISOR
            e.edx |= LEAF1_EDX_APIC
        elif e.function in (0xB, 0x1F):
            e.edx = index
    return cpuid
