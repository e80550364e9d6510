"""The KVM layer against the real /dev/kvm: a few bytes of real-mode code, exact exit sequence."""

from __future__ import annotations

import errno
import os

import pytest

from volt_spec.kvm import exits as x
from volt_spec.kvm.errors import KvmError
from volt_spec.kvm.flavour import kvm_flavour
from volt_spec.kvm.memory import GuestMemory, GuestMemoryError
from volt_spec.kvm.system import Kvm
from volt_spec.kvm.vcpu import Vcpu
from volt_spec.kvm.vm import Vm

from .kvm_required import require_kvm

pytestmark = pytest.mark.hwlane

CODE = bytes([
    0xBA, 0xF8, 0x03,              # mov dx, 0x3f8
    0xB0, 0x41,                    # mov al, 'A'
    0xEE,                          # out dx, al
    0xEC,                          # in al, dx
    0xA2, 0x00, 0x30,              # mov [0x3000], al   (RAM: the IN result lands here)
    0xB8, 0x00, 0x20,              # mov ax, 0x2000
    0x8E, 0xD8,                    # mov ds, ax         (ds base 0x20000: no RAM there)
    0xC6, 0x06, 0x00, 0x00, 0x5A,  # mov byte [0], 0x5a -> MMIO write
    0xA0, 0x10, 0x00,              # mov al, [0x10]     -> MMIO read
    0xF4,                          # hlt
])


@pytest.fixture
def kvm():
    require_kvm()
    k = Kvm()
    yield k
    k.close()


def test_flavour_is_reported(kvm):
    flavour = kvm_flavour()
    print(f"KVM flavour on this host: {flavour}")
    assert flavour in ("pvm", "hardware")


def test_run_real_mode_code_exit_sequence(kvm):
    vm = Vm(kvm.create_vm())
    mem = GuestMemory.anonymous([(0, 0x10000)])
    vm.set_user_memory_region(0, 0, 0x10000, mem.regions[0].host_addr)
    mem.write(0x1000, CODE)
    vcpu = Vcpu(vm.create_vcpu(0), 0, kvm.get_vcpu_mmap_size())
    sregs = vcpu.get_sregs()
    sregs.cs.base, sregs.cs.selector = 0, 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip, regs.rflags = 0x1000, 0x2
    vcpu.set_regs(regs)

    assert vcpu.run() == x.IoOut(0x3F8, b"A")
    assert vcpu.run() == x.IoIn(0x3F8, 1)
    vcpu.complete_io_in(b"\x42")
    assert vcpu.run() == x.MmioWrite(0x20000, b"\x5a")
    assert mem.read(0x3000, 1) == b"\x42"
    assert vcpu.run() == x.MmioRead(0x20010, 1)
    vcpu.complete_mmio_read(b"\x77")
    assert vcpu.run() == x.Hlt()
    assert vcpu.get_regs().rax & 0xFF == 0x77
    vcpu.close()
    vm.close()


def test_every_wrapper_raises_ebadf_on_a_closed_fd(kvm):
    bad = os.open("/dev/null", os.O_RDONLY)
    os.close(bad)
    vm = Vm(bad)
    vcpu = Vcpu.__new__(Vcpu)
    vcpu.fd = bad
    calls = [
        vm.create_irqchip, vm.create_pit2, vm.get_pit2, vm.get_clock,
        lambda: vm.set_tss_addr(0xFFFBD000), lambda: vm.set_identity_map_addr(0xFFFBC000),
        lambda: vm.irq_line(4, True), lambda: vm.get_irqchip(0), lambda: vm.create_vcpu(0),
        lambda: vm.set_user_memory_region(0, 0, 4096, 0),
        vcpu.get_regs, vcpu.get_sregs, vcpu.get_fpu, vcpu.get_lapic, vcpu.get_mp_state,
        vcpu.get_vcpu_events, vcpu.get_debugregs, vcpu.get_xcrs, vcpu.get_xsave, vcpu.get_tsc_khz,
        lambda: vcpu.get_msrs([0x10]), lambda: vcpu.set_msrs([(0x10, 0)]), vcpu.get_cpuid2,
    ]
    for call in calls:
        with pytest.raises(KvmError) as e:
            call()
        assert e.value.errno == errno.EBADF


def test_system_queries(kvm):
    assert kvm.get_api_version() == 12
    kvm.require()
    cpuid = kvm.get_supported_cpuid()
    assert cpuid.nent > 0
    msrs = kvm.get_msr_index_list()
    assert 0x10 in msrs                       # IA32_TSC
    assert any(0x4B564D00 <= m <= 0x4B564DFF for m in msrs)   # the KVM MSR range
    assert kvm.max_vcpus() >= 4


def test_guest_memory_is_bounds_checked():
    mem = GuestMemory.anonymous([(0, 0x2000), (0x10000, 0x1000)])
    mem.write(0x1FFF, b"a")
    mem.write(0x10000, b"bc")
    assert mem.read(0x10000, 2) == b"bc"
    for gpa, n in ((0x1FFF, 2), (0x2000, 1), (0xFFFF, 2), (0x11000, 1), (-1, 1), (0, 1 << 40)):
        with pytest.raises(GuestMemoryError):
            mem.read(gpa, n)
        if n < 100:
            with pytest.raises(GuestMemoryError):
                mem.write(gpa, b"x" * n)
