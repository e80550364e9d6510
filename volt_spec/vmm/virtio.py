"""The VM's virtio-mmio devices: windows on the MMIO bus, ioeventfds, irqfds, and the I/O thread.

Device i sits at VIRTIO_MMIO_BASE + i * 4 KiB with IOAPIC pin VIRTIO_IRQ_BASE + i. Queue
notifications arrive on KVM_IOEVENTFD eventfds (one per queue, datamatch = queue index on
the QueueNotify register) and interrupts leave through KVM_IRQFD (edge): the data path
never wakes a vCPU thread. One I/O thread polls the eventfds and the tap fds and serves the
queues. `--no-ioeventfd` / `--no-irqfd` fall back to MMIO exits and KVM_IRQ_LINE, for
comparison.

Snapshots: every transport is quiesced (its lock held) while the state is captured and
memory forked, so guest memory and queue indices agree. Writable disks are copied into the
snapshot (reflink when the filesystem can, else a sparse copy); read-only disks are
recorded by identity (size, mtime) and a restore over a changed one is refused.
"""

from __future__ import annotations

import os
import select
import threading
from contextlib import ExitStack, contextmanager

from .. import layout
from ..devices.virtio.blk import VirtioBlk
from ..devices.virtio.mmio import VirtioMmio
from ..devices.virtio.net import VirtioNet
from ..devices.virtio.tap import Tap
from ..fsutil import copy_file, preopened_fd
from ..jail import enter_device_thread
from .config import DriveConfig, NetConfig, device_name, tap_name
from .config.devices import mac_text

QUEUE_NOTIFY_OFFSET = 0x50


class VirtioError(ValueError):
    """A device that cannot be attached or restored: one line for the user."""


class EventfdIrq:
    """An edge interrupt through KVM_IRQFD: writing the eventfd raises the GSI in the kernel."""

    def __init__(self, vm, gsi: int) -> None:
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        vm.irqfd(self.fd, gsi)

    def trigger(self) -> None:
        os.eventfd_write(self.fd, 1)


class LineIrq:
    """The same edge through two KVM_IRQ_LINE ioctls (the slow path, for comparison)."""

    def __init__(self, vm, gsi: int) -> None:
        self.vm, self.gsi = vm, gsi

    def trigger(self) -> None:
        self.vm.irq_line(self.gsi, True)
        self.vm.irq_line(self.gsi, False)


def identity(path: str) -> dict:
    fd = preopened_fd(path)                 # a warm VMM's disk: the fd volt handed over
    if fd is None:
        st = os.stat(path)
    else:
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


class VirtioDevices:
    """Every virtio device of one Machine."""

    def __init__(self, vm, memory, mmio, stopped, drives: list, nets: list, vm_name: str,
                 ioeventfd: bool = True, irqfd: bool = True) -> None:
        self.vm, self.memory, self.mmio, self.stopped = vm, memory, mmio, stopped
        self.use_ioeventfd, self.use_irqfd = ioeventfd, irqfd
        self.slots: list[dict] = []          # {kind, name, addr, gsi, transport, model, config}
        self.taps: dict[int, VirtioNet] = {}
        self.notifiers: dict[int, tuple[VirtioMmio, int]] = {}
        for disk in drives:
            try:
                model = VirtioBlk(disk.path, disk.read_only, disk.name[:20])
            except FileNotFoundError:
                raise VirtioError(f"disk {disk.name}: {disk.path}: no such file") from None
            except (OSError, ValueError) as e:
                raise VirtioError(f"disk {disk.name}: {getattr(e, 'strerror', None) or e}") from None
            self._attach("blk", disk.name, model, disk)
        for net in nets:
            try:
                tap = Tap(net.tap)
            except OSError as e:
                raise VirtioError(f"network {net.name}: cannot open tap {net.tap!r}: {e.strerror or e}") from None
            model = VirtioNet(tap, net.mac_bytes(vm_name))
            slot = self._attach("net", net.name, model, net)
            self.taps[tap.fileno()] = model
            slot["tap"] = tap

    def _attach(self, kind: str, name: str, model, config) -> dict:
        index = len(self.slots)
        addr = layout.VIRTIO_MMIO_BASE + index * layout.VIRTIO_MMIO_SIZE
        gsi = layout.VIRTIO_IRQ_BASE + index
        if gsi >= layout.GED_GSI:
            raise VirtioError(f"at most {layout.GED_GSI - layout.VIRTIO_IRQ_BASE} virtio devices (one IOAPIC pin each)")
        vm = self.vm
        irq = EventfdIrq(vm, gsi) if self.use_irqfd else LineIrq(vm, gsi)
        transport = VirtioMmio(model, self.memory, irq)
        self.mmio.insert(addr, layout.VIRTIO_MMIO_SIZE, transport)
        if self.use_ioeventfd:
            for q in range(len(model.queue_sizes)):
                efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                vm.ioeventfd(efd, addr + QUEUE_NOTIFY_OFFSET, 4, datamatch=q)
                self.notifiers[efd] = (transport, q)
        slot = {"kind": kind, "name": name, "addr": addr, "gsi": gsi, "transport": transport,
                "model": model, "config": config}
        self.slots.append(slot)
        return slot

    # -- guest-visible description -------------------------------------------------------------
    def acpi_descs(self) -> list:
        from ..boot.acpi import VirtioMmioDesc
        return [VirtioMmioDesc(s["addr"], layout.VIRTIO_MMIO_SIZE, s["gsi"]) for s in self.slots]

    def cmdline_words(self) -> str:
        """Linux's virtio_mmio.device=<size>@<addr>:<irq> (for kernels without ACPI)."""
        return " ".join(f"virtio_mmio.device=4K@{s['addr']:#x}:{s['gsi']}" for s in self.slots)

    # -- the I/O thread ------------------------------------------------------------------------
    def start(self) -> None:
        if self.notifiers or self.taps:
            threading.Thread(target=self._io_loop, name="virtio-io", daemon=True).start()

    def _io_loop(self) -> None:
        enter_device_thread()                 # guest-made data is handled here: the narrow filter
        self.notifications = 0
        debug = bool(os.environ.get("VOLT_VIRTIO_DEBUG"))
        poller = select.poll()
        for fd in list(self.notifiers) + list(self.taps):
            poller.register(fd, select.POLLIN)
        while not self.stopped.is_set():
            events = poller.poll(500)
            if not events and debug:        # idle: report queues with work nobody was told about
                for slot in self.slots:
                    for i, q in enumerate(slot["transport"].queues):
                        if q.ready and q.pending():
                            os.write(2, f"virtio debug: {slot['name']} queue {i} has {q.pending()} pending, "
                                        f"last_avail={q.last_avail_idx} used={q.used_idx} "
                                        f"notifications={self.notifications} "
                                        f"failures={slot['transport'].failures} err={slot['transport'].last_error!r}\n".encode())
            for fd, _ in events:
                if fd in self.notifiers:
                    try:
                        os.eventfd_read(fd)
                    except BlockingIOError:
                        continue
                    self.notifications += 1
                    transport, q = self.notifiers[fd]
                    transport.queue_notify(q)
                else:
                    self.taps[fd].poll_rx()

    # -- snapshots -----------------------------------------------------------------------------
    @contextmanager
    def quiesced(self):
        """No request in flight while the block is running (every transport's lock held)."""
        with ExitStack() as stack:
            for slot in self.slots:
                stack.enter_context(slot["transport"].lock)
            yield

    def save(self, snapshot_dir: str) -> list[dict]:
        """Transport + device state per slot, and the backing of each (disks copied into the snapshot)."""
        from ..snapshot import codec
        out = []
        for slot in self.slots:
            entry = {"kind": slot["kind"], "name": slot["name"], "addr": slot["addr"], "gsi": slot["gsi"],
                     "transport": codec.encode(slot["transport"].save())}
            cfg = slot["config"]
            if slot["kind"] == "blk":
                entry["disk"] = {"path": cfg.path, "read_only": cfg.read_only}
                if cfg.read_only:
                    entry["disk"]["identity"] = identity(cfg.path)
                else:
                    copy_name = f"disk-{slot['name']}.img"
                    copy_file(cfg.path, os.path.join(snapshot_dir, copy_name))
                    entry["disk"]["copy"] = copy_name
            else:
                entry["net"] = {"tap": cfg.tap, "mac": slot["model"].mac.hex(":")}
            out.append(entry)
        return out

    @staticmethod
    def configs_for_restore(saved: list[dict], snapshot_dir: str | None, disk_overrides: dict[str, str],
                            tap_overrides: dict[str, str], mac_overrides: dict[str, str] | None = None,
                            copied: dict[str, str] | None = None) -> tuple[list, list]:
        """Disk and NIC configs to rebuild the devices, in the saved order, with overrides applied.

        A writable disk is put back from the snapshot's copy onto its path (or the override, so each
        clone gets its own disk; `copied` learns how: reflink or sparse copy); a read-only disk must
        be unchanged since the snapshot. A MAC override is what the device reports from now on (a
        guest that read its MAC before the snapshot keeps using that one until its driver probes again)."""
        disks, nets = [], []
        for entry in saved:
            name = device_name(entry["name"], "the snapshot's virtio device")
            if entry["kind"] == "blk":
                d = entry["disk"]
                target = disk_overrides.get(name, d["path"])
                if d.get("read_only"):
                    try:
                        now = identity(target)
                    except OSError:
                        raise VirtioError(f"disk {name}: {target} is missing") from None
                    was = d.get("identity", {})
                    if target == d["path"] and (now["size"], now["mtime_ns"]) != (was.get("size"), was.get("mtime_ns")):
                        raise VirtioError(f"disk {name}: {target} changed since the snapshot; "
                                          f"restoring over it would not match the guest's memory")
                elif snapshot_dir is not None:    # None: volt put it back already (a warm VMM's load)
                    from ..snapshot.format import snapshot_file
                    how = copy_file(snapshot_file(snapshot_dir, d.get("copy"), f"copy of disk {name}"), target)
                    if copied is not None:
                        copied[name] = how
                disks.append(DriveConfig(name, target, bool(d.get("read_only"))))
            else:
                n = entry["net"]
                tap = tap_name(tap_overrides.get(name, n["tap"]), f"network {name}")
                mac = (mac_overrides or {}).get(name) or n["mac"]
                nets.append(NetConfig(name, tap, mac_text(mac, f"network {name}")))
        return disks, nets

    def restore(self, saved: list[dict]) -> None:
        from ..snapshot import codec
        if len(saved) != len(self.slots):
            raise VirtioError("the snapshot's virtio devices do not match")
        for slot, entry in zip(self.slots, saved):
            try:
                slot["transport"].restore(codec.decode(slot["transport"].State, entry["transport"]))
            except (ValueError, TypeError, AttributeError) as e:
                raise VirtioError(f"virtio device {slot['name']}: bad saved state ({e})") from None

    def kick_all(self) -> None:
        """After a restore: serve anything the guest queued just before the snapshot."""
        for slot in self.slots:
            slot["transport"].kick()

    def counters(self) -> dict:
        out = {}
        for slot in self.slots:
            m = slot["model"]
            keys = ("reads", "writes", "flushes", "bytes_read", "bytes_written", "errors") if slot["kind"] == "blk" \
                else ("rx_frames", "rx_bytes", "rx_dropped", "tx_frames", "tx_bytes", "tx_dropped")
            out[slot["name"]] = {k: getattr(m, k, 0) for k in keys}
            out[slot["name"]]["needs_reset"] = slot["transport"].failures
        return out
