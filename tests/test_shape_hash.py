"""A machine's shape (what its guest sees) vs its machine hash (what binds it to this host too)."""

from __future__ import annotations

from volt_spec.schema.model import build_spec


def spec(name: str, disk: str, tap: str, memory: str = "128Mi", read_only: bool = False):
    return build_spec(f"/specs/{name}.yaml", {
        "apiVersion": "volt/v1", "kind": "VirtualMachine", "metadata": {"name": name},
        "spec": {"kernel": {"path": "builtin:testguest", "cmdline": "volt.ticks=0"}, "memory": memory,
                 "devices": {"disks": [{"name": "data", "path": disk, "readOnly": read_only}],
                             "network": [{"name": "eth0", "tap": tap}]}}})


def test_host_bindings_change_the_machine_but_not_its_shape():
    a, b = spec("a", "/disks/a.img", "vt-a"), spec("b", "/disks/b.img", "vt-b")
    assert a.machine_hash() != b.machine_hash()
    assert a.shape_hash() == b.shape_hash()


def test_what_the_guest_sees_changes_the_shape():
    base = spec("a", "/disks/a.img", "vt-a")
    assert spec("a", "/disks/a.img", "vt-a", memory="256Mi").shape_hash() != base.shape_hash()
    assert spec("a", "/disks/a.img", "vt-a", read_only=True).shape_hash() != base.shape_hash()
