"""volt-vmm boots the built-in test guest on the real /dev/kvm and streams its console."""

from __future__ import annotations

import re
import signal

import pytest

from volt_spec.guest import protocol
from volt_spec.kvm.flavour import kvm_flavour

from .kvm_required import require_kvm
from .vmm_process import VmmProcess, run_vmm

pytestmark = pytest.mark.hwlane


@pytest.fixture(scope="module")
def guest() -> str:
    require_kvm()
    from volt_spec.guest.build import build_guest
    print(f"KVM flavour: {kvm_flavour()}")
    return str(build_guest())


@pytest.mark.parametrize("vcpus,mem", [(1, 128), (4, 128), (1, 1024), (4, 1024), (2, 4096)])
def test_guest_boots_ticks_runs_workload_and_powers_off(guest, vcpus, mem):
    code, lines, err = run_vmm("--kernel", guest, "--vcpus", str(vcpus), "--memory", str(mem),
                               "--cmdline", "volt.ticks=3 volt.tick_ms=300 volt.mem=8 volt.poweroff",
                               timeout=60)
    text = "\n".join(lines)
    assert code == 0, f"exit {code}: {err}\n{text}"
    ready = [ln for ln in lines if ln.startswith("VOLT-READY")]
    assert len(ready) == 1, text
    m = re.search(r"uptime_ms=(\d+) cpus=(\d+) mem_mib=(\d+)", ready[0])
    assert m, ready[0]
    assert int(m.group(2)) == vcpus
    assert int(m.group(3)) == mem
    up = {int(m.group(1)): int(m.group(2)) for m in map(protocol.CPU_UP_RE.match, lines) if m}
    assert sorted(up) == list(range(1, vcpus)), text
    ticks = [int(re.match(r"tick (\d+) clock_ms=\d+", ln).group(1)) for ln in lines
             if re.match(r"tick \d+ clock_ms=\d+", ln)]
    assert ticks == [1, 2, 3], text
    assert any(re.fullmatch(r"mem-ok [0-9a-f]{16}", ln) for ln in lines), text
    assert not any("CORRUPT" in ln or "PANIC" in ln for ln in lines), text


def cpuid_boot(guest, vcpus: int = 4) -> tuple[dict[int, int], int]:
    """({AP's x2APIC id: the initial APIC id its kernel-mode CPUID reported}, the BSP's ring-3 one)."""
    code, lines, err = run_vmm("--kernel", guest, "--vcpus", str(vcpus), "--cmdline", "volt.cpuid volt.poweroff",
                               timeout=60)
    assert code == 0, err
    user = [int(m.group(1)) for m in map(protocol.USER_CPUID_RE.match, lines) if m]
    assert len(user) == 1, lines
    return {int(m.group(1)): int(m.group(2)) for m in map(protocol.CPU_UP_RE.match, lines) if m}, user[0]


def test_guest_cpuid_is_what_we_set_in_kernel_and_user_mode(guest):
    """The CPUID that KVM_SET_CPUID2 gave each vCPU (boot/cpuid.py: the initial APIC id is the
    vCPU's index) is what the guest reads in kernel code (APs), on hardware KVM and on PVM alike,
    and in ring 3 on hardware KVM (the BSP: 0), whichever host CPU runs it. PVM runs guest user
    mode natively without CPUID faulting: there ring 3 reads the host CPU's own APIC id (measured:
    pinned with taskset to host CPU 0 it reads 0, to CPU 1 it reads 1), which no VMM can change."""
    import os
    aps, user = cpuid_boot(guest)
    assert aps == {1: 1, 2: 2, 3: 3}
    if kvm_flavour() == "pvm":
        assert user in range(os.cpu_count()), user
    else:
        assert user == 0


def test_tick_clock_advances_by_the_period(guest):
    code, lines, err = run_vmm("--kernel", guest, "--cmdline", "volt.ticks=4 volt.tick_ms=100 volt.poweroff")
    assert code == 0, err
    clocks = [int(m.group(1)) for ln in lines if (m := re.match(r"tick \d+ clock_ms=(\d+)", ln))]
    assert len(clocks) == 4
    gaps = [b - a for a, b in zip(clocks, clocks[1:])]
    assert all(90 <= g <= 1000 for g in gaps), gaps


def test_sigterm_sends_ctrl_alt_del_and_the_guest_powers_off(guest):
    with VmmProcess("--kernel", guest, "--cmdline", "volt.ticks=0") as vmm:
        vmm.wait_for(r"^VOLT-READY")
        vmm.signal(signal.SIGTERM)
        vmm.wait_for(r"VOLT-CTRL-ALT-DEL")
        code, err = vmm.finish()
    assert code == 0, err


def test_serial_output_is_streamed_before_exit(guest):
    """A pipe reader sees VOLT-READY while the guest is still running (no buffering)."""
    with VmmProcess("--kernel", guest, "--cmdline", "volt.ticks=0") as vmm:
        vmm.wait_for(r"^VOLT-READY", timeout=30)
        assert vmm.proc.poll() is None
        vmm.signal(signal.SIGTERM)
        vmm.finish()
