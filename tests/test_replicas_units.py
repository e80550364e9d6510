"""spec.replicas as pure logic: clone names, taps, MACs, disks, the rules `volt validate` applies."""

from __future__ import annotations

from volt_spec.schema import load_specs
from volt_spec.schema.host import HostLimits
from volt_spec.schema.replicas import clone_mac, tap_name, vm_names

LIMITS = HostLimits(max_vcpus=64, mem_mib=64 << 10)


def write_spec(tmp_path, name="web", replicas="3", tap="vt-{name}", mac=None, extra=""):
    (tmp_path / "data.img").write_bytes(b"\0" * 4096)
    (tmp_path / "ro.img").write_bytes(b"\0" * 4096)
    nic = f"{{name: eth0, tap: '{tap}'" + (f", mac: '{mac}'" if mac else "") + "}"
    text = (f"apiVersion: volt/v1\nkind: VirtualMachine\nmetadata: {{name: {name}}}\nspec:\n"
            f"  kernel: {{path: 'builtin:testguest'}}\n" + (f"  replicas: {replicas}\n" if replicas else "") +
            f"  devices:\n    disks: [{{name: data, path: data.img}}, {{name: ro, path: ro.img, readOnly: true}}]\n"
            f"    network: [{nic}]\n{extra}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def test_names_taps_and_macs_of_clones():
    assert vm_names("web", None) == [("web", None)]
    assert vm_names("web", 3) == [("web-0", 0), ("web-1", 1), ("web-2", 2)]
    assert tap_name("vt-{name}", "web-2", 2) == "vt-web-2"
    assert tap_name("tap{index}", "web", None) == "tap0"
    assert clone_mac("web-1", "eth0", "52:54:00:00:00:fe", 3) == "52:54:00:00:01:01"   # counts up, vendor kept
    derived = {clone_mac(f"web-{i}", "eth0", None, i) for i in range(50)}
    assert len(derived) == 50
    assert all(int(m[:2], 16) & 0b11 == 0b10 for m in derived)       # locally administered, unicast
    assert clone_mac("web-1", "eth0", None, 1) == clone_mac("web-1", "eth0", None, 1)


def test_a_spec_with_replicas_declares_its_clones_each_with_its_own_tap_mac_and_disk(tmp_path):
    specs, errors = load_specs([write_spec(tmp_path)], LIMITS)
    assert errors == []
    assert [(s.name, s.set_name, s.replica) for s in specs] == [("web-0", "web", 0), ("web-1", "web", 1),
                                                                  ("web-2", "web", 2)]
    assert [s.devices["network"][0]["tap"] for s in specs] == ["vt-web-0", "vt-web-1", "vt-web-2"]
    assert len({s.devices["network"][0]["mac"] for s in specs}) == 3
    data, ro = specs[0].devices["disks"]
    assert data["clone"] is True and "clone" not in ro          # a read-only disk is shared
    assert len({s.machine_hash() for s in specs}) == 3 and len({s.shape_hash() for s in specs}) == 1


def test_changing_the_count_leaves_existing_clones_unchanged(tmp_path):
    three, _ = load_specs([write_spec(tmp_path, replicas="3")], LIMITS)
    five, _ = load_specs([write_spec(tmp_path, replicas="5")], LIMITS)
    assert [s.spec_hash() for s in five[:3]] == [s.spec_hash() for s in three]
    plain, _ = load_specs([write_spec(tmp_path, replicas=None, tap="vt-{name}")], LIMITS)
    assert [(s.name, s.replica, s.devices["network"][0]["tap"]) for s in plain] == [("web", None, "vt-web")]
    assert "clone" not in plain[0].devices["disks"][0]


def test_clones_sharing_one_tap_are_refused_at_the_tap(tmp_path):
    _, errors = load_specs([write_spec(tmp_path, tap="vt0")], LIMITS)
    assert [e.message for e in errors] == [
        "spec.devices.network[0].tap: every clone needs a tap of its own: write {name} or {index} in it "
        "(vt-{name}, or vt0{index})"]
    assert (errors[0].line, errors[0].col) == (9, 33)        # at the tap
    _, errors = load_specs([write_spec(tmp_path, tap="vt0", replicas="1")], LIMITS)
    assert errors == []                                      # one clone may keep a fixed tap


def test_names_and_taps_that_do_not_fit_once_filled_in(tmp_path):
    _, errors = load_specs([write_spec(tmp_path, tap="volt-{name}")], LIMITS)
    assert errors == []                                         # volt-web-2: 10 characters
    _, errors = load_specs([write_spec(tmp_path, name="webserver", tap="volt-{name}")], LIMITS)
    assert [e.message for e in errors] == [
        "spec.devices.network[0].tap: tap 'volt-webserver-0' is 16 characters once filled in (at most 15)"]
    _, errors = load_specs([write_spec(tmp_path, name="a" * 62, tap="t{index}", replicas="10")], LIMITS)
    assert any("the last clone's name" in e.message and "longer than 63" in e.message for e in errors), errors
    _, errors = load_specs([write_spec(tmp_path, replicas="0")], LIMITS)
    assert len(errors) == 1 and "spec.replicas" in errors[0].message


def test_a_clone_name_taken_by_another_document_is_a_duplicate(tmp_path):
    first = write_spec(tmp_path, name="web", replicas="2")
    other = tmp_path / "other"
    other.mkdir()
    second = write_spec(other, name="web-1", replicas=None, tap="vt-other")
    _, errors = load_specs([first, second], LIMITS)
    assert len(errors) == 1 and errors[0].file == second, errors
    assert errors[0].message == (f'metadata.name: duplicate VM name "web-1" (first defined at {first}:3:18 '
                                 f'as a clone of "web")')
