"""Fetch and cache a stock Debian kernel (and a static busybox) to boot in test VMs.

Uses the host's apt: `apt-cache` resolves Debian's `linux-image-cloud-amd64`
metapackage to the versioned image package, `apt-get download` fetches the
.deb without installing it, and `dpkg-deb -x` unpacks it in a scratch
directory from which only the wanted file is kept. Every cached file appears
atomically (written aside, then renamed), so concurrent or interrupted runs
never leave a partial file under its final name.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from volt_spec.boot.bzimage import extract_vmlinux
from volt_spec.fsutil import atomic_copy, atomic_write

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
# Debian kernel flavours we fetch: the cloud kernel boots in our VMs (small, virtio as modules);
# the generic kernel is the hardware-KVM lane's L1 (it has 9p, overlayfs and kvm-amd as modules).
FLAVOURS = {"cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}
_FLAVOUR_RE = {"cloud": re.compile(r"^\d+\.\d+\.\d+-\d+-cloud-amd64$"),
               "generic": re.compile(r"^\d+\.\d+\.\d+-\d+-amd64$")}
_MODINFO_DEPENDS_RE = re.compile(rb"(?:^|\0)depends=([^\0]*)\0")
BUSYBOX_PACKAGE = "busybox-static"
BUSYBOX_MEMBER = "bin/busybox"
CACHE_ENV = "VOLT_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "volt-spec"
_DEPENDS_RE = re.compile(r"^\s*Depends:\s*(linux-image-\S+)\s*$", re.MULTILINE)
_VERSION_RE = re.compile(r"^Version:\s*(\S+)\s*$", re.MULTILINE)


class KernelFetchError(RuntimeError):
    """A Debian package could not be resolved, downloaded or unpacked."""


class ToolMissingError(KernelFetchError):
    """apt or dpkg is not installed: retrying cannot help."""


def default_cache_dir() -> Path:
    """$VOLT_CACHE, else ~/.cache/volt-spec."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else DEFAULT_CACHE


def _run(args: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise ToolMissingError(f"{args[0]} not found: fetching Debian packages needs apt and dpkg") from e
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise KernelFetchError(f"{' '.join(args)} failed: {detail[-1] if detail else proc.returncode}")
    return proc.stdout


def _with_apt_update(query: list[str], parse: Callable[[str], str | None]) -> str:
    """Run an apt-cache query; if it finds nothing, `apt-get update` once and retry."""
    for attempt in range(2):
        try:
            found = parse(_run(query))
        except ToolMissingError:
            raise
        except KernelFetchError:
            found = None
        if found:
            return found
        if attempt == 0:
            _run(["apt-get", "update", "-qq"])
    raise KernelFetchError(f"{query[-1]} is not known to apt (even after apt-get update)")


def resolve_kernel_package(metapackage: str = KERNEL_METAPACKAGE) -> str:
    """The versioned image package the metapackage depends on, e.g. linux-image-6.1.0-56-cloud-amd64."""
    def parse(out: str) -> str | None:
        match = _DEPENDS_RE.search(out)
        return match.group(1) if match else None
    return _with_apt_update(["apt-cache", "depends", metapackage], parse)


def candidate_version(package: str) -> str:
    """apt's candidate version of a package."""
    def parse(out: str) -> str | None:
        match = _VERSION_RE.search(out)
        return match.group(1) if match else None
    return _with_apt_update(["apt-cache", "show", "--no-all-versions", package], parse)


@contextmanager
def _unpacked(package: str, beside: Path):
    """`apt-get download` a package and `dpkg-deb -x` it in a scratch dir next to `beside`;
    yields (the .deb's name, the unpacked root). The scratch dir goes away afterwards."""
    beside.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=beside, prefix=".fetch-") as scratch:
        work = Path(scratch)
        _run(["apt-get", "download", "-qq", package], cwd=work)
        debs = sorted(work.glob("*.deb"))
        if not debs:
            raise KernelFetchError(f"apt-get download {package} produced no .deb")
        _run(["dpkg-deb", "-x", str(debs[0]), str(work / "root")])
        yield debs[0].name, work / "root"


def _fetch_member(package: str, member_glob: str, dest: Path, mode: int) -> Path:
    """Download `package`, unpack it aside and keep the one file matching `member_glob` as dest."""
    with _unpacked(package, dest.parent) as (deb, root):
        members = sorted(root.glob(member_glob))
        if not members:
            raise KernelFetchError(f"{deb} has no {member_glob}")
        atomic_copy(members[0], dest, mode)
    return dest


def fetch_kernel_modules(names: list[str], cache_dir: Path | None = None, flavour: str = "cloud",
                         with_deps: bool = False) -> list[Path]:
    """The cached kernel's modules `names` (e.g. virtio_mmio), unpacked from its Debian package.

    Returned in the order given (callers list dependencies first), or with `with_deps` as the
    closure over each module's `depends=` in load order. Cached in modules-<version>/.
    """
    vmlinuz = fetch_debian_kernel(cache_dir, flavour=flavour)
    version = vmlinuz.name.removeprefix("vmlinuz-")
    folder = vmlinuz.with_name(f"modules-{version}")
    index = folder / ("load-order-" + "+".join(names))      # with_deps: the closure found before
    listed = (index.read_text().split() if index.is_file() else None) if with_deps else names
    if listed is not None and all((folder / f"{n}.ko").is_file() for n in listed):
        return [folder / f"{n}.ko" for n in listed]
    with _unpacked(f"linux-image-{version}", folder.parent) as (deb, root):
        found = {_module_name(p): p for p in (root / "lib" / "modules").glob("*/kernel/**/*.ko*")}
        unpacked: dict[str, bytes] = {}            # each module decompressed once (xz: ~0.1 s per MB)
        chosen = (_load_order(names, found, deb, unpacked) if with_deps
                  else [_known(n, found, deb) for n in names])
        files = [folder / (found[key].name.split(".ko")[0] + ".ko") for key in chosen]
        for key, dest in zip(chosen, files):
            atomic_write(dest, unpacked.get(key) or _module_bytes(found[key]))
    if with_deps:
        atomic_write(index, " ".join(f.stem for f in files))
    return files


def _known(name: str, found: dict[str, Path], deb: str) -> str:
    key = name.replace("-", "_")
    if key not in found:
        raise KernelFetchError(f"{deb} has no module {name}")
    return key


def _module_name(path: Path) -> str:
    """A module's name as `depends=` spells it: file name without .ko*, dashes as underscores."""
    return path.name.split(".ko")[0].replace("-", "_")


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        import lzma
        data = lzma.decompress(data)
    elif path.suffix == ".zst":
        raise KernelFetchError(f"module {path.name} is zstd-compressed; install python zstandard")
    return data


def _load_order(names: list[str], found: dict[str, Path], deb: str,
                unpacked: dict[str, bytes] | None = None) -> list[str]:
    """`names` and everything they depend on, each after its dependencies (the bytes read go
    into `unpacked`)."""
    order: list[str] = []
    unpacked = {} if unpacked is None else unpacked

    def visit(name: str, path: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if key in order:
            return
        if key not in found:
            raise KernelFetchError(f"{deb} has no module {name}" + (f" (needed by {path[-1]})" if path else ""))
        if key in path:
            raise KernelFetchError(f"module dependency cycle: {' -> '.join(path + (key,))}")
        unpacked[key] = _module_bytes(found[key])
        match = _MODINFO_DEPENDS_RE.search(unpacked[key])
        for dep in (match.group(1).decode().split(",") if match else []):
            if dep:
                visit(dep, path + (key,))
        order.append(key)

    for n in names:
        visit(n, ())
    return order


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime, default=None)


def fetch_debian_kernel(cache_dir: Path | None = None, refresh: bool = False, flavour: str = "cloud") -> Path:
    """Path to a cached Debian `vmlinuz-<ver>-cloud-amd64` (or `-amd64`, flavour "generic"),
    downloading it if needed.

    A cached kernel is reused without asking apt (apt-cache takes ~1 s);
    `refresh=True` resolves the metapackage again and fetches a newer one.
    """
    cache = cache_dir or default_cache_dir()
    ours = _FLAVOUR_RE[flavour]
    cached = _newest([p for p in cache.glob("vmlinuz-*")
                      if ours.match(p.name.removeprefix("vmlinuz-")) and p.is_file()])
    if cached and not refresh:
        return cached
    try:
        package = resolve_kernel_package(FLAVOURS[flavour])
    except KernelFetchError:
        if cached:
            return cached                    # offline: the cached kernel will do
        raise
    dest = cache / ("vmlinuz-" + package.removeprefix("linux-image-"))
    if dest.is_file():
        return dest
    return _fetch_member(package, "boot/vmlinuz-*", dest, 0o644)


def fetch_busybox(cache_dir: Path | None = None, refresh: bool = False) -> Path:
    """Path to a cached static busybox binary from Debian's busybox-static."""
    cache = cache_dir or default_cache_dir()
    cached = _newest([p for p in cache.glob("busybox-*") if p.is_file()])
    if cached and not refresh:
        return cached
    try:
        version = candidate_version(BUSYBOX_PACKAGE)
    except KernelFetchError:
        if cached:
            return cached
        raise
    upstream = version.split(":", 1)[-1]     # drop the Debian epoch ("1:")
    dest = cache / f"busybox-{upstream}"
    if dest.is_file():
        return dest
    return _fetch_member(BUSYBOX_PACKAGE, BUSYBOX_MEMBER, dest, 0o755)


def vmlinux_path(cache_dir: Path | None = None) -> Path:
    """Path to the ELF vmlinux extracted from the cached Debian kernel (cached next to it)."""
    vmlinuz = fetch_debian_kernel(cache_dir)
    dest = vmlinuz.with_name(vmlinuz.name.replace("vmlinuz-", "vmlinux-", 1))
    if not dest.is_file():
        atomic_write(dest, extract_vmlinux(vmlinuz.read_bytes()))
    return dest


def lay_out_linux_example(d: Path, cache_dir: Path | None = None, refresh: bool = False) -> Path:
    """What examples/vms/linux.yaml names: vmlinuz, the workload initrd.gz, root.img and data.img."""
    from .initramfs import VIRTIO_MODULES, build_workload_initramfs, make_data_disk, make_root_disk
    d.mkdir(parents=True, exist_ok=True)
    busybox = fetch_busybox(cache_dir)
    atomic_copy(fetch_debian_kernel(cache_dir, refresh), d / "vmlinuz")
    build_workload_initramfs(busybox, d / "initrd.gz", fetch_kernel_modules(VIRTIO_MODULES, cache_dir))
    make_root_disk(busybox, d / "root.img")
    make_data_disk(d / "data.img")
    return d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"default: ${CACHE_ENV} or {DEFAULT_CACHE}")
    parser.add_argument("--refresh", action="store_true", help="ask apt for newer packages")
    parser.add_argument("--vmlinux", action="store_true", help="also extract and print the ELF vmlinux")
    parser.add_argument("--example-dir", type=Path, default=None,
                        help="also lay out what examples/vms/linux.yaml needs in this directory: vmlinuz, "
                             "initrd.gz (busybox + virtio modules + /init), an ext4 root.img "
                             "(busybox + /sbin/volt-init) and an empty ext4 data.img")
    args = parser.parse_args(argv)
    try:
        if args.example_dir:
            lay_out_linux_example(args.example_dir, args.cache_dir, args.refresh)
            print(f"example files in {args.example_dir}: vmlinuz, initrd.gz, root.img, data.img")
        print(f"kernel:  {fetch_debian_kernel(args.cache_dir, args.refresh)}")
        if args.vmlinux:
            print(f"vmlinux: {vmlinux_path(args.cache_dir)}")
        print(f"busybox: {fetch_busybox(args.cache_dir, args.refresh)}")
    except KernelFetchError as e:
        parser.exit(1, f"error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
