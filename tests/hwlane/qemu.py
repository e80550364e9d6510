"""Which QEMU runs the lane's L1: a recent one, from Debian backports, cached and never installed.

The L1 leans on TCG's emulation of AMD SVM, and QEMU's releases keep fixing it. Debian 12's QEMU
(7.2) shows it: under it the L1 kernel panics with a corrupted stack every few lane runs and an
L2 Linux sometimes dies at boot (an XSAVE size its own CPUID contradicts). Debian's bookworm-
backports carries QEMU 10; its packages are downloaded with a private apt configuration (the
host's apt sources and state are not touched), unpacked under $VOLT_CACHE/hwlane/ and run from
there (`-L` names its firmware). A system QEMU at least MIN_VERSION is used as it is; when the
backport cannot be had, the system's older one, saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MIN_VERSION = (10, 0)
BINARY = "qemu-system-x86_64"
PACKAGES = ["qemu-system-x86", "qemu-system-data", "qemu-system-common", "seabios"]
MIRROR = "http://deb.debian.org/debian"
_VERSION_RE = re.compile(r"QEMU emulator version (\d+)\.(\d+)\.(\d+)")


class QemuFetchError(RuntimeError):
    """The backported QEMU could not be fetched or does not run: one line naming why."""


@dataclass(frozen=True)
class Qemu:
    binary: Path
    data_dirs: tuple[Path, ...] = ()         # -L: firmware (SeaBIOS, linuxboot_dma.bin)
    version: str = ""

    def argv(self) -> list[str]:
        return [str(self.binary), *(arg for d in self.data_dirs for arg in ("-L", str(d)))]


def _dotted(version: tuple[int, ...] | None) -> str:
    return ".".join(map(str, version or ()))


def qemu_version(binary: str | Path) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION_RE.search(out)
    return tuple(int(g) for g in match.groups()) if match else None


def lane_qemu(cache: Path) -> Qemu:
    """The QEMU for the L1: $VOLT_LANE_QEMU, a system QEMU >= MIN_VERSION, else the backport."""
    if os.environ.get("VOLT_LANE_QEMU"):
        binary = Path(os.environ["VOLT_LANE_QEMU"])
        return Qemu(binary, _data_dirs(binary.parent.parent), _dotted(qemu_version(binary)))
    system = shutil.which(BINARY)
    version = qemu_version(system) if system else None
    if version and version[:2] >= MIN_VERSION:
        return Qemu(Path(system), (), _dotted(version))
    try:
        return backported_qemu(cache)
    except QemuFetchError as e:
        if not version:
            raise
        print(f"hardware-KVM lane: no QEMU >= {MIN_VERSION[0]} ({e}); the L1 runs under the system's "
              f"QEMU {_dotted(version)}", file=sys.stderr)
        return Qemu(Path(system), (), _dotted(version))


def _data_dirs(usr: Path) -> tuple[Path, ...]:
    return tuple(d for d in (usr / "share" / "qemu", usr / "share" / "seabios") if d.is_dir())


def backported_qemu(cache: Path) -> Qemu:
    """The newest cached backport, else fetch it (about 25 MB of .debs)."""
    root = cache / "hwlane"
    for tree in sorted(root.glob("qemu-*"), key=lambda p: p.stat().st_mtime, reverse=True):
        binary = tree / "usr" / "bin" / BINARY
        if binary.is_file() and (version := qemu_version(binary)):
            return Qemu(binary, _data_dirs(tree / "usr"), _dotted(version))
    return _fetch(root)


def _codename() -> str:
    text = Path("/etc/os-release").read_text() if Path("/etc/os-release").is_file() else ""
    match = re.search(r"^VERSION_CODENAME=(\w+)", text, re.MULTILINE)
    if not match:
        raise QemuFetchError("no VERSION_CODENAME in /etc/os-release: not Debian, cannot pick its backports")
    return match.group(1)


def _fetch(root: Path) -> Qemu:
    suite = f"{_codename()}-backports"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".qemu-fetch-") as scratch:
        work = Path(scratch)
        (work / "lists" / "partial").mkdir(parents=True)
        (work / "cache" / "archives" / "partial").mkdir(parents=True)
        (work / "sources.list").write_text(f"deb {MIRROR} {suite} main\n")
        apt = ["-o", f"Dir::Etc::sourcelist={work / 'sources.list'}", "-o", "Dir::Etc::sourceparts=-",
               "-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::Cache={work / 'cache'}",
               "-o", "APT::Sandbox::User=root"]
        _run(["apt-get", *apt, "update", "-qq"], work)
        (work / "debs").mkdir()
        _run(["apt-get", *apt, "download", "-qq", *(f"{p}/{suite}" for p in PACKAGES)], work / "debs")
        tree = work / "tree"
        for deb in sorted((work / "debs").glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(tree)], work)
        binary = tree / "usr" / "bin" / BINARY
        version = qemu_version(binary)
        if not version:
            raise QemuFetchError(f"the {suite} {BINARY} does not run here (missing libraries?): "
                                 f"{subprocess.run(['ldd', str(binary)], capture_output=True, text=True).stdout[-300:]}")
        final = root / f"qemu-{_dotted(version)}"
        if not final.exists():
            os.rename(tree, final)
    binary = final / "usr" / "bin" / BINARY
    return Qemu(binary, _data_dirs(final / "usr"), _dotted(version))


def _run(args: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise QemuFetchError(f"{args[0]} {args[-1]}: {e}") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise QemuFetchError(f"{args[0]} ... {args[-1]} failed: {detail[-1] if detail else proc.returncode}")
