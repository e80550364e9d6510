"""Every VMM that volt starts runs jailed: read from the host's /proc, as an attacker who took over
the VMM would find it. `volt-vmm --jail` does the same for a VMM started by hand."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import pytest

from .kvm_required import require_kvm
from .timing import scaled
from .voltcli import Volt, spec_text, write


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_a_vmm_volt_starts_is_jailed(volt, tmp_path):
    volt("apply", write(tmp_path / "j.yaml", spec_text("j")))
    row = volt.wait_state("j", "running")
    pid, jail = row["pid"], row["jail"]
    status = proc_status(pid)
    uid = int(status["Uid"].split()[0])
    assert uid != 0 and uid == jail["uid"] and status["Uid"].split() == [str(uid)] * 4
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0" * 16
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    for ns in ("mnt", "pid", "ipc", "uts"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    assert not os.path.exists(f"/proc/{pid}/root/etc/shadow") and not os.path.exists(f"/proc/{pid}/root/etc")
    assert os.path.exists(f"/proc/{pid}/root/dev/null") and not os.path.exists(f"/proc/{pid}/root/dev/sda")
    assert status["NSpid"].split()[-1] == "1", "pid 1 of its own pid namespace"
    with open(f"/proc/{pid}/cgroup") as f:
        cgroups = f.read()
    leaf = f"volt-j-{zlib.crc32(jail['root'].encode()):08x}"        # the VM's name and its home's
    assert all(c.endswith(f"/{leaf}") for c in jail["cgroup"]) and f"/{leaf}\n" in cgroups, (jail, cgroups)
    assert b"volt" in open(f"/proc/{pid}/cmdline", "rb").read(), "the host pid is the VMM itself"
    assert volt("snapshot", "j", "--name", "s").returncode == 0        # the jail can still do its work


def test_vms_of_one_name_in_two_homes_get_cgroups_of_their_own(volt, tmp_path):
    """Two $VOLT_HOMEs on a host (two users, two test runs) may both run a VM `j`: each VMM is
    limited by its own cgroup, and one ending does not take the other's cgroup with it."""
    other = Volt(tmp_path / "home2")
    try:
        for v in (volt, other):
            v("apply", write(tmp_path / "j.yaml", spec_text("j")))
        rows = [v.wait_state("j", "running") for v in (volt, other)]
        mine, theirs = (set(r["jail"]["cgroup"]) for r in rows)
        assert not mine & theirs, (mine, theirs)
        other("delete", "j")
        assert all(os.path.isdir(c) for c in mine)
        with open(f"/proc/{rows[0]['pid']}/cgroup") as f:
            placed = f.read()
        assert all(f"/{os.path.basename(c)}\n" in placed for c in mine), placed
    finally:
        other("delete", "--all", check=None)


def test_a_forbidden_system_call_kills_the_vmm_and_status_says_why(tmp_path):
    """--seccomp-selftest: the VMM makes a call its filter forbids (mount) right after loading it."""
    require_kvm()
    from volt_spec.guest.build import build_guest
    proc = subprocess.run([sys.executable, "-m", "volt_spec.vmm.main", "--jail", "--seccomp-selftest",
                           "--kernel", str(build_guest()), "--cmdline", "volt.ticks=3 volt.poweroff"],
                          capture_output=True, text=True, timeout=scaled(60))
    assert proc.returncode == 128 + 31, (proc.returncode, proc.stderr)
    assert "VOLT-READY" not in proc.stdout


def test_status_names_a_seccomp_kill(volt, tmp_path, monkeypatch):
    """Through volt: the supervisor records SIGSYS as a forbidden system call."""
    from volt_spec.runner.supervisor import Supervisor
    sup = Supervisor.__new__(Supervisor)
    sup.vm_dir, sup.generation, sup.stderr_tail = tmp_path, "g", []

    class Console:
        lost = 0
    sup.console = Console()

    class Reserve:
        def release(self):
            pass
    sup.reserve = Reserve()
    sup._record_exit(-31)
    import json
    reason = json.loads((tmp_path / "exit.json").read_text())["reason"]
    assert reason == "killed by signal 31 (SIGSYS): a system call its seccomp filter forbids"


def test_no_jail_is_an_escape_hatch(volt, tmp_path):
    volt("apply", "--no-jail", write(tmp_path / "n.yaml", spec_text("n")))
    row = volt.wait_state("n", "running")
    assert row["jail"] is None and proc_status(row["pid"])["Uid"].split()[0] == "0"


@pytest.mark.parametrize("extra", [[], ["--memory", "256", "--vcpus", "2"]])
def test_a_vmm_run_by_hand_with_jail_boots(tmp_path, extra):
    require_kvm()
    from volt_spec.guest.build import build_guest
    proc = subprocess.run([sys.executable, "-m", "volt_spec.vmm.main", "--jail", "--kernel", str(build_guest()),
                           *extra, "--cmdline", "volt.ticks=3 volt.poweroff"],
                          capture_output=True, text=True, timeout=scaled(60))
    assert proc.returncode == 0, proc.stderr
    assert "tick 3 " in proc.stdout and "VOLT-POWEROFF" in proc.stdout


def test_device_threads_have_a_narrower_filter_of_their_own(volt, tmp_path):
    """The vCPU threads and the virtio I/O thread (the code that handles guest-made data) stack a
    second, narrower filter; the disk still works through it, and the other threads still snapshot."""
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    spec = spec_text("t", vcpus=2, cmdline="volt.ticks=0 volt.tick_ms=200 volt.blk=rw").replace(
        "  running: true\n", f"  running: true\n  devices:\n    disks:\n      - {{name: d, path: {disk}}}\n")
    volt("apply", write(tmp_path / "t.yaml", spec))
    pid = volt.wait_state("t", "running")["pid"]
    volt.wait_log("t", "blk-ok")
    tasks = [proc_status(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")]
    # KVM's own kernel thread (kvm-nx-lpage-recovery) is created from a vCPU thread and shows its filters
    filters = sorted(int(t["Seccomp_filters"]) for t in tasks if not t["Name"].startswith("kvm-"))
    assert filters.count(2) == 3 and set(filters) == {1, 2}, filters      # two vCPUs and virtio-io, the rest one
    volt("snapshot", "t", "--name", "s")                                      # other threads still do their work
    assert volt.state("t")["state"] == "running"


def test_a_vm_on_a_tap_in_another_network_namespace_is_jailed(tmp_path):
    """`ip netns exec` mounts a fresh /sys, without the cgroup file systems: the supervisor mounts
    them in a mount namespace of its own and the VM still gets its cgroup (the lane's Linux tests
    run this way)."""
    require_kvm()
    from .netns import in_netns, tap_namespace
    from .voltcli import Volt
    with tap_namespace("vtj0") as (ns, tap):
        volt = Volt(tmp_path / "home", prefix=in_netns(ns, []))
        spec = spec_text("nj").replace("  running: true\n", f"  running: true\n  devices:\n    network:\n      - {{name: eth0, tap: {tap}}}\n")
        try:
            assert volt("apply", write(tmp_path / "nj.yaml", spec)).stdout.startswith("vm/nj created")
            row = volt.wait_state("nj", "running")
            with open(f"/proc/{row['pid']}/cgroup") as f:
                assert "volt-nj" in f.read()
            assert proc_status(row["pid"])["Seccomp"] == "2"
            assert os.readlink(f"/proc/{row['pid']}/ns/net") != os.readlink("/proc/self/ns/net")
        finally:
            volt("delete", "nj", check=None)


def test_a_jailed_restore_puts_a_writable_disk_back(volt, tmp_path):
    """The jail holds the disk file, not its directory: the snapshot's copy is written into the
    file in place (the lane's Linux restores were refused with EROFS on `data.img.tmp`)."""
    disk = tmp_path / "data.img"
    disk.write_bytes(b"before!!" * 1024)
    spec = spec_text("wd").replace("  running: true\n",
                                   f"  running: true\n  devices:\n    disks:\n      - {{name: data, path: {disk}}}\n")
    path = write(tmp_path / "wd.yaml", spec)
    volt("apply", path)
    volt.wait_state("wd", "running")
    volt("snapshot", "wd", "--name", "with-disk")
    volt("delete", "wd")
    disk.write_bytes(b"after!!!" * 2048)
    applied = volt("apply", path)
    assert applied.stdout.startswith("vm/wd restored from with-disk"), (applied.stdout, applied.stderr)
    assert disk.read_bytes() == b"before!!" * 1024
    assert not (tmp_path / "data.img.tmp").exists()
    assert volt.wait_state("wd", "running")["jail"]["uid"] != 0


def test_a_vmm_whose_jail_gives_no_go_reads_no_guest_input(tmp_path):
    """The supervisor moves the VMM into its cgroups while it starts and then writes the go byte;
    a VMM that gets none (the supervisor failed or died) stops before it opens the kernel."""
    require_kvm()
    from volt_spec.jail import GO_FD_ENV
    r, w = os.pipe()
    os.close(w)
    proc = subprocess.run([sys.executable, "-m", "volt_spec.vmm.main", "--kernel", str(tmp_path / "never-read")],
                          capture_output=True, text=True, timeout=scaled(60), pass_fds=(r,),
                          env=dict(os.environ, **{GO_FD_ENV: str(r)}))
    os.close(r)
    assert proc.returncode != 0 and "the jail did not place this VMM in its cgroup" in proc.stderr, proc.stderr
    assert "never-read" not in proc.stderr


def test_a_jailed_restore_keeps_the_memory_fingerprint(volt, tmp_path):
    """The jail gives the snapshot folder to the VM's uid; a chown sets ctime, which the memory
    fingerprint holds, so chowning at every start made every restore read the whole memory
    file against its checksum. What is the jail's already is left alone."""
    path = write(tmp_path / "fp.yaml", spec_text("fp"))
    volt("apply", path)
    volt.wait_state("fp", "running")
    volt("snapshot", "fp", "--name", "s1")
    volt("delete", "fp")
    assert volt("apply", path).stdout.startswith("vm/fp restored from s1")
    (memory,) = (volt.home / "snapshots").glob("fp/s1/memory.snap")
    verified = memory.with_name("memory.verified")
    volt("delete", "fp")
    before = (os.stat(memory).st_ctime_ns, verified.read_bytes())
    assert volt("apply", path).stdout.startswith("vm/fp restored from s1")
    assert (os.stat(memory).st_ctime_ns, verified.read_bytes()) == before, "the memory file was read in full again"
