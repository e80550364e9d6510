"""The hardware-KVM lane's pure parts: module load order, the job it runs, how it reads results."""

from __future__ import annotations

import pytest

from volt_spec.boot.kernel_fetch import KernelFetchError, _load_order
from tests.hwlane.lane import CHECKOUT, ci_files, job_script, junit_counts


def fake_module(tmp_path, name, depends):
    path = tmp_path / f"{name}.ko"
    path.write_bytes(b"\x7fELF...\0license=GPL\0depends=" + ",".join(depends).encode() + b"\0vermagic=6.1\0")
    return path


def test_modules_load_after_their_dependencies(tmp_path):
    found = {"9p": fake_module(tmp_path, "9p", ["9pnet", "fscache", "netfs"]),
             "9pnet": fake_module(tmp_path, "9pnet", []), "fscache": fake_module(tmp_path, "fscache", ["netfs"]),
             "netfs": fake_module(tmp_path, "netfs", []), "kvm_amd": fake_module(tmp_path, "kvm-amd", ["kvm", "ccp"]),
             "kvm": fake_module(tmp_path, "kvm", ["irqbypass"]), "ccp": fake_module(tmp_path, "ccp", []),
             "irqbypass": fake_module(tmp_path, "irqbypass", [])}
    order = _load_order(["9p", "kvm-amd"], found, "linux-image.deb")
    assert sorted(order) == sorted(found)
    for name, path in found.items():
        deps = path.read_bytes().split(b"depends=")[1].split(b"\0")[0].decode()
        for dep in filter(None, deps.split(",")):
            assert order.index(dep.replace("-", "_")) < order.index(name), (dep, name, order)


def test_a_missing_dependency_is_named(tmp_path):
    found = {"a": fake_module(tmp_path, "a", ["b"])}
    with pytest.raises(KernelFetchError, match="has no module b .needed by a."):
        _load_order(["a"], found, "x.deb")


def test_the_job_scales_deadlines_and_runs_this_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr("tests.hwlane.lane.local_trees", lambda results: [])
    script = job_script(tmp_path, ["-m", "hwlane"], tmp_path / "cache")
    assert "export VOLT_TIMEOUT_SCALE=10" in script and f"export PYTHONPATH={CHECKOUT}" in script
    assert f"--junitxml={tmp_path / 'junit.xml'}" in script and script.rstrip().endswith(f"> {tmp_path / 'rc'}")
    assert "echo $? >" in job_script(tmp_path, [], tmp_path, command="python benchmarks/linux.py")


def test_ci_set_holds_the_guest_booting_files():
    files = ci_files()
    for name in ("test_snapshot_restore", "test_e2e_policy", "test_virtio_e2e", "test_linux_e2e"):
        assert f"tests/{name}.py" in files
    assert "tests/test_schema_corpus.py" not in files


def test_junit_counts(tmp_path):
    junit = tmp_path / "j.xml"
    junit.write_text('<testsuites><testsuite><testcase classname="t" name="a"/>'
                     '<testcase classname="t" name="b"><failure message="x"/></testcase>'
                     '<testcase classname="t" name="c"><skipped/></testcase>'
                     '<testcase classname="t" name="d"><error/></testcase></testsuite></testsuites>')
    counts, failed = junit_counts(junit)
    assert counts == {"passed": 1, "failed": 1, "errors": 1, "skipped": 1}
    assert failed == ["t::b", "t::d"]


def test_an_l1_panic_is_seen_in_the_middle_of_a_pytest_line():
    from tests.hwlane.lane import L1_PANIC
    line = "tests/test_e2e_snapshot.py::test_x [  638.512045] Kernel panic - not syncing: corrupted stack end"
    assert L1_PANIC.search(line) and not L1_PANIC.search("Kernel panic mentioned by a test")
