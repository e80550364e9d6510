"""Build the volt-spec test guest (a tiny PVH kernel) with the machine's gcc, cached by content.

The ELF lands in ``$VOLT_CACHE`` (or ``~/.cache/volt-spec``) under
``guest-<sha256(sources + flags)[:16]>/testguest.elf``, built in a temporary
directory and renamed into place, so concurrent builders never see half a file.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sys

SRC_DIR = pathlib.Path(__file__).resolve().parent / "src"
ELF_NAME = "testguest.elf"
LINKER_SCRIPT = "guest.ld"
SOURCE_SUFFIXES = (".c", ".S", ".h", ".ld")

# Ring 0 is emulated on PVM: no FPU/SSE state, no red zone (interrupts share the
# stack), no PIC/PIE, no CET markers (endbr64) the emulator may not know.
CFLAGS = (
    "-m64", "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
    "-ffreestanding", "-nostdlib", "-nostartfiles", "-static",
    "-fno-pic", "-fno-pie", "-no-pie", "-mcmodel=small",
    "-mno-sse", "-mno-mmx", "-mno-red-zone", "-mgeneral-regs-only",
    "-fno-stack-protector", "-fcf-protection=none", "-fno-asynchronous-unwind-tables",
    "-fno-builtin", "-fno-tree-loop-distribute-patterns",
    "-mstringop-strategy=unrolled_loop",
    "-Wl,--build-id=none", "-Wl,-z,noexecstack", "-Wl,-n", "-Wl,--no-warn-rwx-segments",
)
BUILD_TIMEOUT_S = 120


class GuestBuildError(RuntimeError):
    """The guest could not be built (missing toolchain or a compile/link error)."""


def cache_root() -> pathlib.Path:
    """Where built artefacts live: ``$VOLT_CACHE`` or ``~/.cache/volt-spec``."""
    env = os.environ.get("VOLT_CACHE")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "volt-spec"


def source_files() -> list[pathlib.Path]:
    """The guest sources (flat in src/), in a stable order."""
    return sorted(p for p in SRC_DIR.iterdir() if p.suffix in SOURCE_SUFFIXES)


def source_digest() -> str:
    """sha256 over file names, contents and compiler flags: the cache key."""
    h = hashlib.sha256()
    for path in source_files():
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update("\0".join(CFLAGS).encode())
    return h.hexdigest()[:16]


def _compile(out: pathlib.Path) -> None:
    import shutil
    import subprocess
    gcc = shutil.which("gcc")
    if gcc is None:
        raise GuestBuildError("gcc not found on PATH: install gcc and binutils (apt-get install gcc binutils)")
    units = [str(p) for p in source_files() if p.suffix in (".c", ".S")]
    cmd = [gcc, *CFLAGS, "-I", str(SRC_DIR), "-T", str(SRC_DIR / LINKER_SCRIPT), "-o", str(out), *units]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    except FileNotFoundError as e:
        raise GuestBuildError(f"cannot run {gcc}: install gcc and binutils ({e})") from e
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip()
        if "cannot find" in detail and " ld" in detail or "collect2" in detail and "not found" in detail:
            raise GuestBuildError("linker not found: install gcc and binutils (apt-get install binutils)")
        raise GuestBuildError(f"guest build failed (gcc exit {res.returncode}):\n{detail}")


def build_guest(force: bool = False) -> pathlib.Path:
    """Return the path of the built guest ELF, compiling it only when the sources changed."""
    root = cache_root()
    final_dir = root / f"guest-{source_digest()}"
    elf = final_dir / ELF_NAME
    if elf.is_file() and not force:
        return elf
    import shutil                      # here: the digest and a cached build need neither (volt apply)
    import tempfile
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".guest-build-", dir=root))
    try:
        _compile(tmp / ELF_NAME)
        if force and final_dir.exists():
            stale = pathlib.Path(tempfile.mkdtemp(prefix=".guest-stale-", dir=root))
            os.replace(final_dir, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final_dir)
        except OSError:
            if not elf.is_file():      # lost a race only if the winner left a complete build
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return elf


def main(argv: list[str] | None = None) -> int:
    """CLI body of ``volt guest build [--force]``: print the ELF path."""
    args = sys.argv[1:] if argv is None else argv
    try:
        path = build_guest(force="--force" in args)
    except GuestBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
