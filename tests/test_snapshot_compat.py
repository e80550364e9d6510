"""A snapshot written by volt before the VMM's config/builder/persist rework (and its one device
codec) restores with this build: the same state.json, every device's state included, and the
guest continues. The older build is taken from the git history."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile

import pytest

from .kvm_required import require_kvm
from .vmm_process import VmmProcess

OLD_COMMIT = "593883c"          # the last commit before the rework (snapshot format 1.0.0)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def old_build(tmp_path_factory) -> str:
    """volt_spec as of OLD_COMMIT, unpacked from `git archive` (skipped where there is no history,
    e.g. a copy of the tree without .git)."""
    if shutil.which("git") is None or not os.path.isdir(os.path.join(REPO, ".git")):
        pytest.skip("needs the git history of this checkout (git archive of the pre-rework commit)")
    tar = subprocess.run(["git", "-C", REPO, "archive", OLD_COMMIT, "volt_spec"], capture_output=True)
    if tar.returncode != 0:
        pytest.skip(f"commit {OLD_COMMIT} is not in this checkout's history: {tar.stderr.decode().strip()}")
    out = tmp_path_factory.mktemp("old-volt")
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as t:
        t.extractall(out, filter="data")
    return str(out)


def test_a_snapshot_from_before_the_rework_restores_and_the_guest_continues(old_build, tmp_path):
    require_kvm()
    from volt_spec.guest.build import build_guest
    guest = str(build_guest())
    disk = tmp_path / "data.img"
    disk.write_bytes(b"\0" * (1 << 20))
    sock, snap = str(tmp_path / "old.sock"), str(tmp_path / "snap")
    with VmmProcess("--kernel", guest, "--cmdline", "volt.ticks=0 volt.tick_ms=50", "--api-sock", sock,
                    "--disk", f"{disk},name=data", code=old_build) as old:
        old.wait_for(r"^tick 3 ")
        old.wait_api(sock).put("/snapshot/create", {"snapshot_path": snap})
        old.proc.kill()
        old.finish()
    with VmmProcess("--restore", snap, "--disk-override", f"data={disk}") as new:
        first = int(new.wait_for(r"^tick (\d+) ", timeout=30).group(1))
        following = new.wait_for_value(r"^tick (\d+) ", first + 1, timeout=30)
        assert first >= 4 and following == first + 1, new.lines      # taken after tick 3: goes on from there
