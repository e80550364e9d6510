"""State volt writes is root's alone: files 0600, directories 0700 (they name paths, pids, specs
and hold guest memory)."""

from __future__ import annotations

import stat

from .voltcli import spec_text, write


def test_state_files_and_directories_are_private(volt, tmp_path):
    volt("apply", write(tmp_path / "m.yaml", spec_text("m")))
    volt.wait_log("m", "tick 1 ")
    volt("snapshot", "m", "--name", "s")
    vm = volt.home / "vms" / "m"
    snap = volt.home / "snapshots" / "m" / "s"
    for path in [vm, vm / "run", volt.home / "vms", volt.home / "locks", volt.home / "snapshots" / "m", snap]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for name in ["applied.json", "instance.json", "console.log", "supervisor.log", "jail.json", "run/vm.json"]:
        assert stat.S_IMODE((vm / name).stat().st_mode) == 0o600, name
    for path in snap.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
