"""Bad input to volt-vmm: one clear line on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .kvm_required import require_kvm
from .vmm_process import run_vmm

TRIPLE_FAULT_ASM = """
    .code32
    .globl _start
_start:
    lidt idt_desc
    ud2                      # #UD with an empty IDT -> #GP -> #DF -> triple fault
idt_desc: .word 0
          .long 0
    .section .note.Xen, "a"
    .align 4
    .long 4, 4, 18
    .asciz "Xen"
    .long _start
"""
LINKER = """ENTRY(_start)
PHDRS { text PT_LOAD; note PT_NOTE; }
SECTIONS { . = 0x100000; .text : { *(.text) } :text .note.Xen : { *(.note.Xen) } :text :note }
"""


@pytest.fixture(scope="module")
def guest() -> str:
    require_kvm()
    from volt_spec.guest.build import build_guest
    return str(build_guest())


@pytest.mark.parametrize("args,message", [
    (["--kernel", "/nonexistent/vmlinux"], "no such file"),
    (["--kernel", "/etc/hostname"], "not an ELF file or a bzImage"),
    (["--kernel", "{guest}", "--memory", "0"], "--memory must be a positive"),
    (["--kernel", "{guest}", "--memory", "100000000"], "exceeds this host's memory"),
    (["--kernel", "{guest}", "--vcpus", "0"], "--vcpus must be at least 1"),
    (["--kernel", "{guest}", "--vcpus", "100000"], "exceeds this host's limit"),
    (["--kernel", "{guest}", "--memory", "lots"], "not a valid int"),
    (["--kernel", "{guest}", "--boot", "bios"], "--boot must be pvh or linux64"),
    (["--kernel", "{guest}", "--initrd", "/nonexistent/initrd"], "initrd /nonexistent/initrd: no such file"),
    (["--frobnicate"], "unknown option"),
    ([], "--kernel (boot), --restore (from a snapshot), --config FILE or --api-sock alone"),
])
def test_bad_input_gives_one_line(guest, args, message):
    args = [a.replace("{guest}", guest) for a in args]
    code, lines, err = run_vmm(*args)
    assert code in (1, 2)
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err, err


def test_triple_fault_is_reported(tmp_path, guest):
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed for this test"
    (tmp_path / "tf.S").write_text(TRIPLE_FAULT_ASM)
    (tmp_path / "tf.ld").write_text(LINKER)
    subprocess.run([gcc, "-m32", "-c", str(tmp_path / "tf.S"), "-o", str(tmp_path / "tf.o")], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-T", str(tmp_path / "tf.ld"), str(tmp_path / "tf.o"),
                    "-o", str(tmp_path / "tf.elf")], check=True)
    code, _, err = run_vmm("--kernel", str(tmp_path / "tf.elf"), timeout=60)
    assert code == 3, err
    assert "triple fault" in err and "Traceback" not in err


def test_help_teaches_with_an_example():
    code, lines, err = run_vmm("--help")
    assert code == 0
    assert any("example" in ln for ln in lines) and any("--kernel" in ln for ln in lines)
