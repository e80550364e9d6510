"""Reading a snapshot for a restore: its state checked and its memory mapped, nothing created in KVM.

The order in which a VM is built from it is vmm/builder.py's and vmm/persist.py's. A bad
snapshot is refused with a one-line reason, by its shape before anything is mapped or any VM
exists, by the rest while KVM registers the memory and before any vCPU exists: a CRC mismatch,
an unknown format version, a state whose vCPUs, memory size and regions disagree (or exceed the
host), a memory file that is missing, not a plain name in the snapshot's directory, not a regular
file, not the recorded size or not the recorded contents, a different CPU vendor or KVM kind, or
a different XSAVE size.
"""

from __future__ import annotations

import os
import stat

from ..kvm.flavour import cpu_identity, kvm_flavour
from .fingerprint import check_memory, check_memory_fd
from .format import SnapshotError, memory_path, parse, read_raw, verify
from .chain import Link, is_diff, map_diffs, parents
from .compressed import CompressedError, checksum, is_compressed
from .memory_file import MemoryFileError, map_memory, open_memory_file


MAX_VCPUS = 254               # as vmm/config/machine.py's VCPU_LIMIT: x2APIC ids below the broadcast id (one IOAPIC)


def check_compatible(state: dict, where: str, xsave_size: int | None = None) -> None:
    host = state.get("meta", {}).get("host", {})
    here_kvm = kvm_flavour()
    if host.get("kvm") != here_kvm:
        raise SnapshotError(f"{where}: taken on {host.get('kvm')} KVM, this host has {here_kvm} KVM")
    cpu = cpu_identity()
    if host.get("cpu_vendor") != cpu["vendor"]:
        raise SnapshotError(f"{where}: taken on a {host.get('cpu_vendor')} CPU, this host has {cpu['vendor']}")
    if host.get("cpu_model") not in (None, cpu["model_name"]):
        raise SnapshotError(f"{where}: taken on a {host.get('cpu_model')!r}, this host has a {cpu['model_name']!r} "
                            f"(the guest may rely on features this CPU lacks)")
    saved = state.get("meta", {}).get("xsave_size")
    if xsave_size is not None and saved is not None and int(saved) != xsave_size:
        raise SnapshotError(f"{where}: XSAVE area of {saved} bytes, this host uses {xsave_size}")


def load(snapshot_dir: str, xsave_size: int | None = None, host: tuple[int, int] | None = None,
         full_check: bool = False):
    """(state, memory mapped MAP_PRIVATE, checks) -- nothing created in KVM yet.

    Before anything is mapped: the state's shape (check_shape) and the memory file's name (a
    plain name in `snapshot_dir`), type (regular) and exact size. `checks()` verifies the CRC,
    the host's compatibility and that the memory is what was written (fingerprint.py; in full
    when `full_check`); the caller runs it while KVM registers the memory (a 5 ms ioctl on
    another thread) and before any vCPU runs, so a bad snapshot is still refused with nothing
    started. If the memory cannot even be mapped, the CRC is checked first so the reason given
    is the real one.
    """
    raw, path = read_raw(snapshot_dir)
    doc, state = parse(raw, path)
    memory = None
    mapped: list[tuple] = []     # (directory, memory fd, checksum, its digest or None) of each file mapped

    def checks() -> None:
        verify(raw, doc, state, path)
        check_compatible(state, snapshot_dir, xsave_size)
        for where, fd, sha256, digest in mapped:
            check_memory(where, fd, sha256, force=full_check, digest=digest)
        if memory is not None and memory.filling is not None:
            try:
                memory.filling.arm()
            except CompressedError as e:
                raise SnapshotError(str(e)) from None

    try:
        check_shape(state, snapshot_dir, host)
        mem_path = memory_path(snapshot_dir, state["memory"])
        chain = _chain(snapshot_dir, state)
    except SnapshotError:
        verify(raw, doc, state, path)      # a corrupt file: say so rather than what it seems to hold
        raise
    base_dir, base = (chain[-1].dir, chain[-1].memory) if chain else (snapshot_dir, state["memory"])
    try:
        if is_compressed(state["memory"]):
            memory, fd = _load_compressed(mem_path, state["memory"], snapshot_dir)
            layout = state["memory"]
            mapped.append((snapshot_dir, fd, layout.get("sha256"), lambda f: checksum(f, layout, snapshot_dir)))
            return state, memory, checks
        memory = map_memory(memory_path(base_dir, base) if chain else mem_path, base)
        mapped.append((base_dir, memory.regions[0].backing[0], base.get("sha256"), None))
        if chain:
            _map_chain(memory, [*reversed(chain[:-1]), Link(snapshot_dir, raw, doc, state, path)], mapped)
    except SnapshotError:
        checks()
        raise
    except (MemoryFileError, CompressedError) as e:
        checks()
        raise SnapshotError(str(e)) from None
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as e:
        checks()
        raise SnapshotError(f"{snapshot_dir}: bad memory layout in state.json ({e})") from None
    return state, memory, checks


def _chain(snapshot_dir: str, state: dict) -> list[Link]:
    """A diff's parents (parents()), standing on an uncompressed full snapshot; [] for a full one."""
    chain = parents(snapshot_dir, state) if is_diff(state) else []
    if chain and is_compressed(chain[-1].memory):
        raise SnapshotError(f"{snapshot_dir}: its full snapshot {os.path.basename(chain[-1].dir)} is compressed; "
                            f"a diff is mapped over an uncompressed one")
    return chain


def _map_chain(memory, diffs: list[Link], mapped: list) -> None:
    """Map the diffs over `memory` (the chain's base), oldest first; their files join `mapped`."""
    try:
        fds = map_diffs(memory, diffs)
    except BaseException:
        mapped.clear()             # their fds close with the memory: checks() reads none
        memory.close()
        raise
    mapped += [(link.dir, fd, link.memory.get("sha256"), None) for link, fd in zip(diffs, fds)]


def _load_compressed(path: str, layout: dict, where: str):
    """(guest RAM filled from memory.snap.zst, the file's fd: the memory's, closed with it). The
    file gets map_memory's checks (a regular file, a plain name)."""
    from .lazy_memory import load as load_lazy
    fd = open_memory_file(path)
    try:
        memory, how = load_lazy(fd, layout, where)
    except BaseException:
        os.close(fd)
        raise
    memory.filling_method = how
    return memory, fd


def load_fds(state_fd: int, memory_fd: int, fingerprint: bytes | None, memory, vcpus: int,
             xsave_size: int | None = None, host: tuple[int, int] | None = None, where: str = "the snapshot"):
    """load() for a VMM that holds no host paths (a warm VMM): state.json and memory.snap arrive
    as fds, and the memory is mapped MAP_FIXED over `memory`, the guest RAM already registered
    with KVM for `vcpus` vCPUs, whose shape the snapshot must have (checked before anything is mapped).
    Returns (state, checks); `checks` as load()'s, the memory checked against `fingerprint`
    (the memory.verified line read beside it) or else in full."""
    raw = read_fd(state_fd, where)
    doc, state = parse(raw, where)

    def checks() -> None:
        verify(raw, doc, state, where)
        check_compatible(state, where, xsave_size)
        check_memory_fd(where, memory_fd, state["memory"].get("sha256"), fingerprint)

    try:
        check_shape(state, where, host)
        if is_diff(state) or is_compressed(state["memory"]):
            raise SnapshotError(f"{where}: a {'diff' if is_diff(state) else 'compressed'} snapshot is restored "
                                f"from its directory, not by a warm VMM")
        check_fits(state, memory, vcpus, where)
        check_memory_file(memory_fd, state["memory"], where)
    except SnapshotError:
        verify(raw, doc, state, where)
        raise
    for region, r in zip(memory.regions, state["memory"]["regions"]):
        region.map_file_over(memory_fd, r["offset"])
    return state, checks


def read_fd(fd: int, where: str) -> bytes:
    """state.json's bytes from an fd: a regular file, read from its start, at most MAX_STATE_BYTES + 1."""
    from .format import MAX_STATE_BYTES
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise SnapshotError(f"{where}: the state file passed is not a regular file")
    chunks, pos = [], 0
    while pos <= MAX_STATE_BYTES:
        data = os.pread(fd, min(MAX_STATE_BYTES + 1 - pos, 1 << 20), pos)
        if not data:
            break
        chunks.append(data)
        pos += len(data)
    return b"".join(chunks)


def check_fits(state: dict, memory, vcpus: int, where: str) -> None:
    """A shape-checked state is a VM of `vcpus` vCPUs whose RAM is exactly `memory`'s regions (a warm VMM's shape)."""
    want = [(r.gpa, r.size) for r in memory.regions]
    got = [(r["gpa"], r["size"]) for r in state["memory"]["regions"]]
    n = state["meta"]["vcpus"]
    if got != want or n != vcpus:
        raise SnapshotError(f"{where}: the snapshot is a VM of {n} vCPU(s) and {state['meta']['memory_mib']} MiB; "
                            f"this warm VMM is shaped for {vcpus} vCPU(s) and {memory.size >> 20} MiB")


def check_memory_file(fd: int, layout: dict, where: str) -> None:
    """The memory fd is a regular file of exactly the recorded size (see map_memory)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise SnapshotError(f"{where}: the memory file passed is not a regular file")
    if st.st_size != int(layout["size"]):
        raise SnapshotError(f"{where}: the memory file holds {st.st_size} bytes; the snapshot recorded {layout['size']}")


def check_shape(state: dict, where: str, host: tuple[int, int] | None = None) -> None:
    """The machine a (still unverified) state describes, consistent with itself and with what
    this VMM builds: a vCPU state per vCPU, memory.size the recorded MiB, and the memory
    regions exactly the RAM layout for that size, laid end to end in the file. Anything else
    would map what was never written, or start a vCPU from reset. `host` is (its memory in
    MiB, its vCPU limit): a snapshot asking for more is refused before anything is mapped."""
    from ..layout import MiB, ram_ranges
    try:
        meta, memory, vcpus = state["meta"], state["memory"], state["vcpus"]
        n, mib, size = meta["vcpus"], meta["memory_mib"], memory["size"]
        regions = [(r["gpa"], r["size"], r["offset"]) for r in memory["regions"]]
    except (KeyError, TypeError) as e:
        raise SnapshotError(f"{where}: state.json lacks {e} (not a snapshot this VMM wrote)") from None
    if not all(type(v) is int for v in (n, mib, size, *(x for r in regions for x in r))):
        raise SnapshotError(f"{where}: state.json's vCPU count, memory size and regions must be integers")
    if not isinstance(vcpus, list) or len(vcpus) != n or n < 1:
        raise SnapshotError(f"{where}: state.json records {n} vCPUs but holds the state of "
                            f"{len(vcpus) if isinstance(vcpus, list) else 'no'} vCPUs")
    if mib < 1 or size != mib * MiB:
        raise SnapshotError(f"{where}: state.json records {mib} MiB of memory but a {size}-byte memory file")
    want, offset = [], 0
    for gpa, length in ram_ranges(size):
        want.append((gpa, length, offset))
        offset += length
    if regions != want:
        raise SnapshotError(f"{where}: state.json's memory regions {regions} are not the RAM layout of "
                            f"{mib} MiB {want}")
    host_mib, max_vcpus = host or (0, 0)
    if host_mib and mib > host_mib:
        raise SnapshotError(f"{where}: the snapshot's {mib} MiB of memory exceed this host's {host_mib} MiB")
    if max_vcpus and n > min(max_vcpus, MAX_VCPUS):
        raise SnapshotError(f"{where}: the snapshot's {n} vCPUs exceed this host's limit ({min(max_vcpus, MAX_VCPUS)})")
