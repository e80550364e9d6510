"""VmmConfig: the one tree of the VMM's inputs. The flags, vm.json and the runner build the same
tree; every section is strict (an unknown or ill-typed field is named in one line)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from volt_spec.vmm.config import (BootSourceConfig, DriveConfig, PolicyConfig, RetainConfig, TriggerConfig,
                                  VmmConfig, VmmConfigError)
from volt_spec.vmm.config.args import config_from_args
from volt_spec.vmm.main import parse_args

FLAGS = ["--kernel", "/k", "--initrd", "/i", "--cmdline", "console=ttyS0", "--memory", "256", "--vcpus", "2",
         "--boot", "pvh", "--disk", "/d.img,name=root,ro", "--disk", "/e.img", "--net", "tap=tap0,name=eth0",
         "--net", "tap=tap1,mac=52:54:00:AA:bb:01", "--virtio-cmdline", "--no-irqfd", "--api-sock", "/run/v/api.sock",
         "--name", "web", "--stop-timeout", "3"]


def from_flags(argv: list[str]) -> VmmConfig:
    return config_from_args(parse_args(argv))


def test_flags_build_the_tree_vm_json_holds() -> None:
    config = from_flags(FLAGS)
    assert config.machine.to_dict() == {"vcpus": 2, "memory_mib": 256, "track_dirty_pages": False,
                                        "compress_snapshots": False}
    assert config.boot_source == BootSourceConfig("/k", "/i", "console=ttyS0", "pvh")
    assert config.drives == [DriveConfig("root", "/d.img", True), DriveConfig("disk1", "/e.img", False)]
    assert [(n.name, n.tap, n.mac) for n in config.network] == [("eth0", "tap0", None),
                                                               ("net1", "tap1", "52:54:00:aa:bb:01")]
    assert (config.virtio.announce, config.virtio.ioeventfd, config.virtio.irqfd) == ("cmdline", True, False)
    assert (config.api.socket, config.api.state_dir, config.name, config.stop_timeout) == \
        ("/run/v/api.sock", "/run/v", "web", 3.0)
    again = VmmConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.to_dict() == config.to_dict()


def test_restore_flags_and_overrides() -> None:
    config = from_flags(["--restore", "/s/snap-1", "--clock", "realtime", "--verify",
                         "--disk-override", "data=/clone/data.img", "--tap-override", "eth0=tapc",
                         "--mac-override", "eth0=02:00:00:00:00:0A"])
    assert config.boot_source is None
    assert config.restore.to_dict() == {"snapshot_dir": "/s/snap-1", "clock": "realtime", "verify": True,
                                        "disk_overrides": {"data": "/clone/data.img"},
                                        "tap_overrides": {"eth0": "tapc"}, "mac_overrides": {"eth0": "02:00:00:00:00:0a"}}
    assert VmmConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("change,message", [
    ({"bogus": 1}, "unknown field(s) bogus"),
    ({"machine": {"vcpus": 1, "ram": 5}}, "machine: unknown field(s) ram"),
    ({"machine": {"vcpus": True}}, "machine.vcpus must be an integer"),
    ({"machine": {"memory_mib": 8}}, "too small"),
    ({"boot_source": {"kernel": "/k", "cmdline": "a\nb"}}, "control characters"),
    ({"boot_source": {"kernel": ""}}, "boot_source.kernel must be a non-empty string"),
    ({"boot_source": {"kernel": "/k", "boot": "bios"}}, "boot_source.boot must be pvh or linux64"),
    ({"drives": [{"name": "../x", "path": "/d"}]}, "is not a valid name"),
    ({"drives": [{"name": "a", "path": "/d"}, {"name": "a", "path": "/e"}]}, "used twice"),
    ({"network": [{"name": "n", "tap": "tap/0"}]}, "not a tap device name"),
    ({"network": [{"name": "n", "tap": "t", "mac": "52:54"}]}, "expected six hex pairs"),
    ({"virtio": {"announce": "dt"}}, "virtio.announce must be acpi or cmdline"),
    ({"restore": {"snapshot_dir": "/s", "clock": "later"}}, "restore.clock must be continue or realtime"),
    ({"restore": {"snapshot_dir": "/s", "disk_overrides": {"a/b": "/x"}}}, "is not a valid name"),
    ({"policy": {"triggers": [{"trigger": "interval", "every": "1s"}]}}, "unknown field(s) every"),
    ({"policy": {"triggers": [{"trigger": "interval", "every_s": 0}]}}, "every_s must be a positive number"),
    ({"policy": {"retain": {"count": 0}}}, "policy.retain.count must be an integer"),
    ({"policy": {"vm": "Not A Name"}}, "is not a valid name"),
    ({"stop_timeout": "soon"}, "stop_timeout must be a positive number"),
])
def test_every_section_is_strict(change: dict, message: str) -> None:
    base = {"name": "vm", "boot_source": {"kernel": "/k"}}
    data = dict(base, **change)
    if "restore" in change:
        data.pop("boot_source")
    with pytest.raises(VmmConfigError) as e:
        VmmConfig.from_dict(data)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_boot_and_restore_exclude_each_other() -> None:
    with pytest.raises(VmmConfigError, match="exclude each other"):
        VmmConfig.from_dict({"boot_source": {"kernel": "/k"}, "restore": {"snapshot_dir": "/s"}})
    with pytest.raises(VmmConfigError, match="exclude each other"):
        from_flags(["--kernel", "/k", "--restore", "/s"])
    with pytest.raises(VmmConfigError, match="cannot be combined with --memory"):
        from_flags(["--config", "/vm.json", "--memory", "64"])


def test_the_spec_policy_maps_to_the_vmm_policy_in_one_place(tmp_path) -> None:
    from volt_spec.runner.home import VmDir
    from volt_spec.runner.vmconfig import policy_config
    applied = {"machine_hash": "h", "document": {"kind": "VirtualMachine"},
               "snapshots": {"clock": "realtime", "retain": {"count": 2, "maxAge": "7d"},
                             "triggers": [{"trigger": "ready", "marker": "UP"}, {"trigger": "interval", "every": "90s"},
                                          {"trigger": "console", "match": "^ok$"}, {"trigger": "stop"}]}}
    policy = policy_config(applied, VmDir(tmp_path, "web"))
    assert policy.triggers == [TriggerConfig("ready", marker="UP"), TriggerConfig("interval", every_s=90.0),
                               TriggerConfig("console", match="^ok$"), TriggerConfig("stop")]
    assert policy.retain == RetainConfig(2, 7 * 86400.0)
    assert (policy.vm, policy.clock, policy.machine_hash) == ("web", "realtime", "h")
    assert PolicyConfig.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy


def test_volt_vmm_boots_from_a_vm_json_and_refuses_a_bad_one(tmp_path) -> None:
    from .kvm_required import require_kvm
    require_kvm()
    from volt_spec.guest.build import build_guest
    config = VmmConfig(boot_source=BootSourceConfig(str(build_guest()), cmdline="volt.ticks=1 volt.poweroff"))
    good = tmp_path / "vm.json"
    good.write_text(json.dumps(config.to_dict()))
    run = subprocess.run([sys.executable, "-m", "volt_spec.vmm.main", "--config", str(good)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "VOLT-POWEROFF" in run.stdout, run.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(config.to_dict(), machine={"vcpus": 0})))
    run = subprocess.run([sys.executable, "-m", "volt_spec.vmm.main", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr.strip() == "volt-vmm: machine.vcpus must be at least 1, not 0"
