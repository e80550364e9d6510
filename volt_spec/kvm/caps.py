"""KVM capability numbers (KVM_CAP_* in <linux/kvm.h>) the VMM checks for."""

from __future__ import annotations

import enum


class Cap(enum.IntEnum):
    IRQCHIP = 0
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    EXT_CPUID = 7
    NR_VCPUS = 9
    MP_STATE = 14
    SET_GUEST_DEBUG = 23
    IRQFD = 32
    PIT2 = 33
    IOEVENTFD = 36
    SET_IDENTITY_MAP_ADDR = 37
    ADJUST_CLOCK = 39
    VCPU_EVENTS = 41
    DEBUGREGS = 50
    XSAVE = 55
    XCRS = 56
    TSC_CONTROL = 60
    GET_TSC_KHZ = 61
    MAX_VCPUS = 66
    TSC_DEADLINE_TIMER = 72
    PIT_STATE2 = 35
    IMMEDIATE_EXIT = 136
    XSAVE2 = 208


# What booting a guest needs; missing any of these is a clear, early error.
REQUIRED_FOR_BOOT = (
    Cap.IRQCHIP, Cap.USER_MEMORY, Cap.EXT_CPUID, Cap.PIT2, Cap.MP_STATE,
    Cap.TSC_DEADLINE_TIMER, Cap.IMMEDIATE_EXIT,
)
