"""Snapshots are untrusted input: crafted and corrupted ones are refused before any guest runs.

One real snapshot of the test guest is taken per module; each case copies it, damages or
crafts it (state.json re-encoded with a valid CRC where the point is what it says, not its
CRC), runs `volt-vmm --restore` on it and checks: exit status 1 with one `volt-vmm:` line
naming the cause, no traceback, no guest output, and nothing outside the copy touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from volt_spec.snapshot.format import encode, read_state

from .kvm_required import require_kvm
from .test_snapshot_restore import take_snapshot
from .timing import scaled
from .vmm_process import VmmProcess

# Not in the hardware-KVM lane: nothing here depends on the kind of KVM.


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> str:
    require_kvm()
    from volt_spec.guest.build import build_guest
    tmp = tmp_path_factory.mktemp("good")
    return take_snapshot(tmp, str(build_guest()))["dir"]


def restore_refused(snap: str, *extra: str) -> str:
    """Run volt-vmm --restore; assert it refused cleanly. Returns its one-line reason."""
    proc = subprocess.run([sys.executable, "-m", "volt_spec.vmm.main", "--restore", snap, *extra],
                          capture_output=True, text=True, timeout=scaled(60), stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, (proc.returncode, proc.stderr, proc.stdout[-500:])
    assert "tick" not in proc.stdout and "VOLT" not in proc.stdout, "a guest ran on a bad snapshot"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("volt-vmm: "), proc.stderr
    return lines[0]


def copy_of(good: str, tmp_path) -> str:
    dest = str(tmp_path / "snap")
    shutil.copytree(good, dest)
    return dest


def state_of(snap: str) -> dict:
    return read_state(snap)


def write_state(snap: str, state: dict) -> None:
    """state.json re-encoded: a valid CRC over whatever the state now says."""
    with open(os.path.join(snap, "state.json"), "wb") as f:
        f.write(encode(state))


def craft(change):
    def apply(snap: str) -> None:
        state = state_of(snap)
        change(state)
        write_state(snap, state)
    return apply


def flip_memory_byte(snap: str) -> None:
    """One bit of guest RAM changed in place (the size stays, the fingerprint does not)."""
    path = os.path.join(snap, "memory.snap")
    fd = os.open(path, os.O_RDWR)
    try:
        offset = os.lseek(fd, 0, os.SEEK_DATA) + 100
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 1]), offset)
    finally:
        os.close(fd)


def replace_with(name: str, how: str):
    def apply(snap: str) -> None:
        path = os.path.join(snap, name)
        keep = path + ".orig"
        os.rename(path, keep)
        if how == "fifo":
            os.mkfifo(path)
        elif how == "symlink":
            os.symlink(keep, path)
        elif how == "dir":
            os.mkdir(path)
        elif how == "missing":
            pass
        elif how == "empty":
            open(path, "wb").close()
    return apply


def resize_memory(delta: int):
    def apply(snap: str) -> None:
        path = os.path.join(snap, "memory.snap")
        os.truncate(path, os.path.getsize(path) + delta)
    return apply


def raw_state(edit):
    def apply(snap: str) -> None:
        path = os.path.join(snap, "state.json")
        with open(path, "rb") as f:
            raw = f.read()
        with open(path, "wb") as f:
            f.write(edit(raw))
    return apply


def set_in(*keys, value):
    def change(state: dict) -> None:
        node = state
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return change


def drop(*keys):
    def change(state: dict) -> None:
        node = state
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]
    return change


def huge_memory(state: dict) -> None:
    """A consistent state for 100000 MiB: only the host's limit can refuse it."""
    from volt_spec.layout import MiB, ram_ranges
    size = 100000 * MiB
    state["meta"]["memory_mib"] = 100000
    state["memory"]["size"] = size
    regions, offset = [], 0
    for gpa, length in ram_ranges(size):
        regions.append({"gpa": gpa, "size": length, "offset": offset})
        offset += length
    state["memory"]["regions"] = regions


def many_vcpus(state: dict) -> None:
    state["meta"]["vcpus"] = 300
    state["vcpus"] = state["vcpus"] * 300


def other_regions(change):
    def apply(state: dict) -> None:
        change(state["memory"]["regions"][0])
    return apply

def as_diff(parent: str = "base", sha: str | None = None, extents: list | None = None, loop: bool = False):
    """Make the copy a diff on `parent` (a sibling copy of the good snapshot, made here unless
    the name is not a plain one), recording `sha` as the parent's checksum (default: the real one)."""
    def apply(snap: str) -> None:
        state = state_of(snap)
        base = os.path.join(os.path.dirname(snap), parent) if "/" not in parent else None
        if base is not None and parent != "nope" and not os.path.exists(base):
            shutil.copytree(snap, base)
        if loop:                              # the parent is itself a diff on this one
            parent_state = state_of(base)
            parent_state["memory"].update(diff={"parent": os.path.basename(snap), "parent_sha256":
                                                state["memory"]["sha256"], "depth": 1}, extents=[])
            write_state(base, parent_state)
        state["memory"].update(diff={"parent": parent, "parent_sha256": sha or state["memory"]["sha256"],
                                     "depth": 1}, extents=[[0, 4096]] if extents is None else extents)
        write_state(snap, state)
    return apply


def as_compressed(damage=None):
    """Make the copy a compressed snapshot (as `snapshots.compress: zstd` keeps one), then `damage`
    its memory.snap.zst (a bytearray changed in place)."""
    def apply(snap: str) -> None:
        from volt_spec.snapshot.compressed import FILE, compress_file
        state = state_of(snap)
        fd = os.open(os.path.join(snap, "memory.snap"), os.O_RDONLY)
        try:
            info, _ = compress_file(fd, os.path.join(snap, FILE))
        finally:
            os.close(fd)
        os.unlink(os.path.join(snap, "memory.snap"))
        state["memory"].update(file=FILE, compressed=info)
        write_state(snap, state)
        if damage is not None:
            path = os.path.join(snap, FILE)
            with open(path, "rb") as f:
                data = bytearray(f.read())
            damage(data)
            with open(path, "wb") as f:
                f.write(data)
    return apply


def _first_data_frame(data: bytearray) -> int:
    """The offset of the first frame that is not the frame of zeros (the copy's first RAM page)."""
    from volt_spec.snapshot.compressed import zero_frame
    zero, pos = zero_frame(), 0
    while data[pos:pos + len(zero)] == zero:
        pos += len(zero)
    return pos


def _flip_in_frame(data: bytearray) -> None:
    at = _first_data_frame(data) + 200
    data[at:at + 16] = bytes(b ^ 0x5A for b in data[at:at + 16])


def _lie_about_a_frame(data: bytearray) -> None:
    import struct
    n = struct.unpack_from("<I", data, len(data) - 9)[0]
    table = len(data) - (8 + 8 * n + 9)
    struct.pack_into("<I", data, table + 8 + 4, 1 << 20)      # frame 0 "decompresses" to 1 MiB


CASES = {
    # memory.snap itself
    "memory-byte-flipped": (flip_memory_byte, "does not match the checksum"),
    "memory-grown-4k": (resize_memory(4096), "grown"),
    "memory-truncated-4k": (resize_memory(-4096), "truncated"),
    "memory-missing": (replace_with("memory.snap", "missing"), "missing"),
    "memory-fifo": (replace_with("memory.snap", "fifo"), "FIFO"),
    "memory-symlink": (replace_with("memory.snap", "symlink"), "symlink"),
    "memory-directory": (replace_with("memory.snap", "dir"), "directory"),
    "memory-empty": (replace_with("memory.snap", "empty"), "0 bytes"),
    # state.json as a file
    "state-fifo": (replace_with("state.json", "fifo"), "FIFO"),
    "state-symlink": (replace_with("state.json", "symlink"), "symlink"),
    "state-directory": (replace_with("state.json", "dir"), "directory"),
    "state-missing": (replace_with("state.json", "missing"), "no state.json"),
    "state-empty": (replace_with("state.json", "empty"), "not valid JSON"),
    "state-garbage": (raw_state(lambda raw: b"\x00\xff" * 100), "not valid JSON"),
    "state-too-large": (raw_state(lambda raw: raw + b" " * (65 << 20)), "MiB limit"),
    "state-crc-flipped": (raw_state(lambda raw: raw.replace(b'"memory_mib":128', b'"memory_mib":129')), "CRC-64 mismatch"),
    "state-not-ours": (raw_state(lambda raw: raw.replace(b'"volt-snapshot"', b'"other-thing"')), "not a volt snapshot"),
    "state-version-2": (raw_state(lambda raw: raw.replace(b'"version": "1.0.0"', b'"version": "2.0.0"')), "version"),
    "state-extra-member": (raw_state(lambda raw: raw.replace(b'{"crc64"', b'{"extra": 1, "crc64"')), "unknown member"),
    # CRC-valid states that say what must not be believed
    "memory-file-absolute": (craft(set_in("memory", "file", value="/etc/passwd")), "not a plain file name"),
    "memory-file-dotdot": (craft(set_in("memory", "file", value="../good/memory.snap")), "not a plain file name"),
    "memory-file-empty": (craft(set_in("memory", "file", value="")), "not a plain file name"),
    "memory-file-number": (craft(set_in("memory", "file", value=42)), "not a plain file name"),
    "memory-file-hidden": (craft(set_in("memory", "file", value=".memory.snap")), "not a plain file name"),
    "vcpus-empty": (craft(set_in("vcpus", value=[])), "holds the state of 0 vCPUs"),
    "vcpus-not-a-list": (craft(set_in("vcpus", value={"0": {}})), "no vCPUs"),
    "meta-vcpus-64": (craft(set_in("meta", "vcpus", value=64)), "records 64 vCPUs"),
    "meta-vcpus-string": (craft(set_in("meta", "vcpus", value="1")), "must be integers"),
    "meta-vcpus-bool": (craft(set_in("meta", "vcpus", value=True)), "must be integers"),
    "meta-vcpus-300": (craft(many_vcpus), "exceed this host's limit"),
    "memory-mib-100000": (craft(huge_memory), "exceed this host's"),
    "memory-mib-mismatch": (craft(set_in("meta", "memory_mib", value=256)), "records 256 MiB"),
    "memory-size-mismatch": (craft(set_in("memory", "size", value=64 << 20)), "MiB of memory but"),
    "region-offset-shifted": (craft(other_regions(lambda r: r.update(offset=4096))), "not the RAM layout"),
    "region-gpa-moved": (craft(other_regions(lambda r: r.update(gpa=1 << 32))), "not the RAM layout"),
    "region-size-huge": (craft(other_regions(lambda r: r.update(size=1 << 40))), "not the RAM layout"),
    "regions-empty": (craft(set_in("memory", "regions", value=[])), "not the RAM layout"),
    "regions-negative": (craft(other_regions(lambda r: r.update(offset=-4096))), "not the RAM layout"),
    "meta-missing": (craft(drop("meta")), "lacks 'meta'"),
    "memory-missing-section": (craft(drop("memory")), "lacks 'memory'"),
    "memory-checksum-missing": (craft(drop("memory", "sha256")), "records no memory checksum"),
    "memory-checksum-other": (craft(set_in("memory", "sha256", value="0" * 64)), "does not match the checksum"),
    "vcpu-regs-garbage": (craft(lambda s: s["vcpus"][0].update(regs="!!not base64!!")), "vcpu 0"),
    "vcpu-state-empty": (craft(lambda s: s["vcpus"].__setitem__(0, {})), "vcpu 0"),
    # a diff's chain: its parent and extents are untrusted too
    "diff-parent-path": (as_diff(parent="../good"), "names no valid parent"),
    "diff-parent-missing": (as_diff(parent="nope"), "parent snapshot nope is missing"),
    "diff-parent-changed": (as_diff(sha="0" * 64), "not the one it was taken on"),
    "diff-parents-loop": (as_diff(loop=True), "loops back to"),
    "diff-extent-outside": (as_diff(extents=[[1 << 40, 4096]]), "not inside one memory region"),
    "diff-extent-misaligned": (as_diff(extents=[[100, 4096]]), "bad diff extent"),
    "diff-extents-overlap": (as_diff(extents=[[0, 8192], [4096, 4096]]), "bad diff extent"),
    "diff-extent-negative": (as_diff(extents=[[-4096, 4096]]), "bad diff extent"),
    "diff-extents-too-many": (as_diff(extents=[[i * 4096, 4096] for i in range(40000)]), "at most"),
    # a compressed memory file (snapshots.compress: zstd): its frames and seek table
    "compressed-frame-flipped": (as_compressed(_flip_in_frame), "does not match the checksum"),
    "compressed-truncated": (as_compressed(lambda d: d.__delitem__(slice(-100, None))), "seek table"),
    "compressed-table-garbage": (as_compressed(lambda d: d.__setitem__(slice(-9, None), b"\xff" * 9)), "seek table"),
    "compressed-frame-size-lie": (as_compressed(_lie_about_a_frame), "frame 0 of the compressed memory file"),
    "compressed-not-zstd": (as_compressed(lambda d: d.__setitem__(slice(None), b"\0" * len(d))), "seek table"),
    "compressed-symlink": (lambda snap: (as_compressed()(snap), replace_with("memory.snap.zst", "symlink")(snap)),
                           "symlink"),
    "clock-saved-at-negative": (craft(set_in("vm", "clock", "saved_at_ns", value=-10 ** 30)), "saved_at_ns"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_snapshot_is_refused_before_any_guest_runs(good, tmp_path, case):
    damage, reason = CASES[case]
    snap = copy_of(good, tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    damage(snap)
    extra = ("--clock", "realtime") if case == "clock-saved-at-negative" else ()
    line = restore_refused(snap, *extra)
    assert reason in line, line
    assert victim.read_text() == "untouched"
    assert os.path.getsize(os.path.join(good, "memory.snap")) > 0


def test_the_hostile_corpus_is_large_enough():
    assert len(CASES) >= 30


def test_an_untouched_copy_restores_after_a_full_check_and_then_by_fingerprint(good, tmp_path):
    """A copied snapshot (new inode) is read in full once and its fingerprint recorded; the next
    restore trusts the fingerprint (it records nothing); --verify reads it in full every time."""
    snap = copy_of(good, tmp_path)
    fp = os.path.join(snap, "memory.verified")
    memory_inode = str(os.stat(os.path.join(snap, "memory.snap")).st_ino)
    assert open(fp).read().split()[1] != memory_inode, "the copied fingerprint names the original's inode"
    written = []
    for extra in ((), (), ("--verify",)):
        with VmmProcess("--restore", snap, *extra) as vmm:
            vmm.wait_for(r"^tick \d+ ")
            vmm.proc.kill()
        assert open(fp).read().split()[1] == memory_inode
        written.append(os.stat(fp).st_ino)               # atomic writes: a new inode each time
    assert written[0] == written[1] != written[2], written
    flip_memory_byte(snap)
    assert "does not match the checksum" in restore_refused(snap)
    assert "does not match the checksum" in restore_refused(snap, "--verify")
