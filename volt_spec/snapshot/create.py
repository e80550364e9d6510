"""Take a snapshot of a running Machine: pause, save every component, write, resume, fsync, rename.

Only the state capture and the memory copy happen while the guest is paused; the
memory checksum and the fsyncs follow after it runs again. The snapshot appears
under its final name only when complete on disk (temp dir + fsync + rename), so a
crash mid-write leaves nothing that looks valid, and older snapshots are untouched.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time

from ..kvm.flavour import cpu_identity, kvm_flavour
from .format import MEMORY_FILE, STATE_FILE, SnapshotError, encode
from .store import disk_usage
from .memory_file import ForkedWrite, MemoryFileError, memory_digest, write_memory

# Copy guest memory in a forked child so the guest is paused only for the fork.
FORK_WRITER = os.environ.get("VOLT_SNAPSHOT_FORK", "1") != "0"
from .vcpu_state import save_vcpu, xsave_size
from .vm_state import save_vm


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY) if directory else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def record_fingerprint(snapshot_dir: str, sha256: str) -> None:
    """The memory file as written, so a restore of it need not read it all (fingerprint.py)."""
    from .fingerprint import record
    fd = os.open(os.path.join(snapshot_dir, MEMORY_FILE), os.O_RDONLY | os.O_CLOEXEC)
    try:
        record(snapshot_dir, fd, sha256)
    finally:
        os.close(fd)


def host_identity() -> dict:
    cpu = cpu_identity()
    return {"kernel": platform.release(), "kvm": kvm_flavour(), "cpu_vendor": cpu["vendor"],
            "cpu_model": cpu["model_name"], "cpu_family": cpu["family"], "cpu_model_number": cpu["model"]}


def quiesced(machine):
    from contextlib import nullcontext
    return machine.virtio.quiesced() if machine.virtio is not None else nullcontext()


def create_snapshot(machine, dest: str, meta: dict | None = None, resume: bool = True) -> dict:
    """Write a complete snapshot of `machine` to the new directory `dest`; returns a summary."""
    dest = os.path.abspath(dest)
    if os.path.exists(dest):
        raise SnapshotError(f"{dest} already exists (snapshots are immutable; pick another name)")
    parent = os.path.dirname(dest)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.partial-", dir=parent)
    try:
        if not hasattr(machine, "msr_indices"):
            machine.msr_indices = machine.kvm.get_msr_index_list()
        xsize = xsave_size(machine.kvm)
        was_running = machine.state == "Running"
        t0 = time.perf_counter()
        machine.pause()
        writer = None
        virtio = None
        try:
            with quiesced(machine):     # device I/O threads hold still: memory and queues agree
                tsc_read_at: list[int] = []
                vcpus = [save_vcpu(v, machine.msr_indices, xsize, tsc_read_at if v.index == 0 else None)
                         for v in machine.vcpus]
                vm = save_vm(machine.vm, tsc_read_at[0] if tsc_read_at else None)
                devices = machine.save_devices()
                if machine.virtio is not None:
                    virtio = machine.virtio.save(tmp)
                if FORK_WRITER:
                    writer = ForkedWrite(machine.memory, os.path.join(tmp, MEMORY_FILE))
                else:
                    memory = write_memory(machine.memory, os.path.join(tmp, MEMORY_FILE))
        finally:
            if resume and was_running:
                machine.resume()
        paused_ms = (time.perf_counter() - t0) * 1000
        if writer is not None:
            try:
                memory = writer.wait()
            except MemoryFileError as e:
                raise SnapshotError(str(e)) from None
        memory["sha256"] = memory_digest(os.path.join(tmp, MEMORY_FILE))
        c = machine.config
        state = {
            "meta": dict(meta or {}, created=time.time(), memory_mib=c.memory_mib, vcpus=c.vcpus,
                         xsave_size=xsize, host=host_identity(), paused_ms=round(paused_ms, 3)),
            "boot": {"kernel": c.kernel, "initrd": c.initrd, "cmdline": c.cmdline, "boot": c.boot},
            "memory": memory,
            "vcpus": vcpus,
            "vm": vm,
            "devices": devices,
        }
        if virtio is not None:
            state["virtio"] = virtio
        state_fd = os.open(os.path.join(tmp, STATE_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(state_fd, "wb") as f:
            f.write(encode(state))
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(os.path.join(tmp, MEMORY_FILE))
        record_fingerprint(tmp, memory["sha256"])
        _fsync_path(tmp, directory=True)
        os.rename(tmp, dest)
        _fsync_path(parent, directory=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"id": os.path.basename(dest), "path": dest, "paused_ms": round(paused_ms, 3),
            "size_bytes": disk_usage(dest), "logical_bytes": memory["size"],
            "memory_data_bytes": memory["data_bytes"], "created": state["meta"]["created"]}


