"""Which kind of KVM this host has: hardware (VT-x / AMD-V) or PVM (software, nested hosts)."""

from __future__ import annotations

import os

PVM = "pvm"
HARDWARE = "hardware"


def kvm_flavour(sys_module: str = "/sys/module", cpuinfo: str = "/proc/cpuinfo") -> str:
    """'pvm' when kvm_pvm is loaded, else 'hardware' (vmx/svm) or 'unknown'."""
    if os.path.isdir(os.path.join(sys_module, "kvm_pvm")):
        return PVM
    try:
        with open(cpuinfo, "rb") as f:
            for line in f:
                if line.startswith(b"flags"):
                    words = line.split()
                    if b"vmx" in words or b"svm" in words:
                        return HARDWARE
                    break
    except OSError:
        pass
    for mod in ("kvm_intel", "kvm_amd"):
        if os.path.isdir(os.path.join(sys_module, mod)):
            return HARDWARE
    return "unknown"


CPUINFO = "/proc/cpuinfo"
_host_identity: dict[str, str] | None = None      # the host's CPU does not change under a process


def cpu_identity(cpuinfo: str = CPUINFO) -> dict[str, str]:
    """vendor_id, model name, family and model of the host's first CPU.

    Reads only the first CPU's block with one read(2), once per process for the host's: it is
    on the restore path (a warm VMM reads it before its load)."""
    global _host_identity
    if cpuinfo == CPUINFO and _host_identity is not None:
        return dict(_host_identity)
    identity = _read_identity(cpuinfo)
    if cpuinfo == CPUINFO:
        _host_identity = dict(identity)
    return identity


def _read_identity(cpuinfo: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        fd = os.open(cpuinfo, os.O_RDONLY | os.O_CLOEXEC)
        try:
            head = os.read(fd, 8192)
        finally:
            os.close(fd)
    except OSError:
        head = b""
    for line in head.split(b"\n\n", 1)[0].decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return {"vendor": out.get("vendor_id", "unknown"), "model_name": out.get("model name", "unknown"),
            "family": out.get("cpu family", "?"), "model": out.get("model", "?")}
