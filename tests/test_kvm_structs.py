"""The ctypes mirrors and ioctl numbers match the installed <linux/kvm.h>, byte for byte."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest

from volt_spec.kvm import ioctls, structs


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory) -> dict[str, int]:
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "gcc is needed to compare our structures with <linux/kvm.h> (apt-get install gcc)"
    d = tmp_path_factory.mktemp("kvmh")
    lines = ["#include <stdio.h>", "#include <linux/kvm.h>", "int main(void) {"]
    for cname in structs.C_SIZES:
        lines.append(f'  printf("%s=%zu\\n", "{cname}", sizeof({cname}));')
    for name in ioctls.ALL:
        lines.append(f'  printf("%s=%lu\\n", "{name}", (unsigned long){name});')
    lines += ["  return 0;", "}"]
    (d / "facts.c").write_text("\n".join(lines))
    subprocess.run([cc, "-o", str(d / "facts"), str(d / "facts.c")], check=True)
    out = subprocess.run([str(d / "facts")], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split("=") for line in out.splitlines())}


@pytest.mark.parametrize("cname", sorted(structs.C_SIZES))
def test_struct_size_matches_header(c_facts, cname):
    assert ctypes.sizeof(structs.C_SIZES[cname]) == c_facts[cname]


@pytest.mark.parametrize("name", sorted(ioctls.ALL))
def test_ioctl_number_matches_header(c_facts, name):
    assert ioctls.ALL[name] == c_facts[name], f"{name}: {ioctls.ALL[name]:#x} != {c_facts[name]:#x}"


def test_set_irqchip_is_declared_ior_like_the_header():
    assert ioctls.KVM_SET_IRQCHIP >> 30 == 2  # _IOC_READ, not _IOC_WRITE


def test_kvm_run_exit_union_offset():
    assert ctypes.sizeof(structs.KvmRunHeader) == structs.KVM_RUN_EXIT_UNION_OFFSET
