"""Which guest pages changed since the last snapshot: what a diff snapshot writes.

Two records, since neither sees everything: KVM's dirty log (memory slots registered with
KVM_MEM_LOG_DIRTY_PAGES) has the guest's own writes, and each region's `written` bytearray has
what our devices wrote into guest memory from the host (virtqueue used rings, virtio-blk reads,
virtio-net receives, the VM generation ID), which never pass through the guest's page tables.
`collect()` takes both and starts both afresh, with the vCPUs paused and the virtio I/O
quiesced (vmm/persist.py), so the next diff begins exactly where this snapshot was cut. A diff
is pre-copied: KVM's log is read (and re-protected) while the guest still runs and those pages
copied out; in the pause only what was written since (and the devices' record) is copied.

With KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (PVM has it, as hardware KVM does) KVM_GET_DIRTY_LOG
only reads the log and KVM_CLEAR_DIRTY_LOG re-protects just the pages it returned; without it,
KVM_GET_DIRTY_LOG reads and resets in one call. Either way the method is named in the snapshot
(`memory.diff.tracking`) and in `volt snapshots list -o json`.
"""

from __future__ import annotations

import ctypes

from ..kvm.caps import Cap
from ..kvm.vm import KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_MEM_LOG_DIRTY_PAGES

PAGE_SHIFT = 12
_ALL = (1 << 64) - 1


class DirtyTracker:
    """Dirty-page tracking for one VM's memory slots (slot i = memory.regions[i])."""

    flags = KVM_MEM_LOG_DIRTY_PAGES

    def __init__(self, vm, memory) -> None:
        self.vm, self.memory = vm, memory
        self.manual = bool(vm.check_extension(Cap.MANUAL_DIRTY_LOG_PROTECT2) & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
        if self.manual:
            vm.enable_cap(Cap.MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
        self.method = "kvm-dirty-log+clear" if self.manual else "kvm-dirty-log"
        self._bitmaps = [(ctypes.c_uint64 * ((r.size >> PAGE_SHIFT) + 63 >> 6))() for r in memory.regions]
        for r in memory.regions:
            r.written = bytearray(r.size >> PAGE_SHIFT)

    def collect(self, guest_only: bool = False) -> list[list[tuple[int, int]]]:
        """Per region, the (offset, length) byte runs written since the last collect (or since the
        slots were registered), and a fresh start for both records. `guest_only`: KVM's log alone
        (read while the guest runs, for the pre-copy: the devices' record is taken only while
        they are quiesced, else a device could mark a page in the record just read)."""
        out = []
        for slot, (region, bitmap) in enumerate(zip(self.memory.regions, self._bitmaps)):
            ctypes.memset(bitmap, 0, ctypes.sizeof(bitmap))
            self.vm.get_dirty_log(slot, bitmap)
            pages = region.size >> PAGE_SHIFT
            if self.manual:
                self.vm.clear_dirty_log(slot, 0, pages, bitmap)
            if guest_only:
                written = bytearray(pages)
            else:
                written, region.written = region.written, bytearray(pages)
            out.append(_runs(bitmap, written, pages))
        return out


_BLOCK = 512                     # bitmap bytes looked at at once: 4096 pages, 16 MiB of guest RAM
_ZERO_BLOCK = bytes(_BLOCK)


def _runs(bitmap, written: bytearray, pages: int) -> list[tuple[int, int]]:
    """Byte runs of the pages set in the KVM bitmap or in `written` (one byte per page). The
    bitmap is skipped 16 MiB of RAM at a time where it is clear (the guest is paused meanwhile)."""
    dirty = bytearray(written)
    raw = memoryview(bitmap).cast("B")
    for start in range(0, len(raw), _BLOCK):
        block = raw[start:start + _BLOCK]
        if block == _ZERO_BLOCK[:len(block)]:
            continue
        for word_index, word in enumerate(block.cast("Q"), start // 8):
            if not word:
                continue
            base = word_index << 6
            if word == _ALL:
                dirty[base:base + 64] = b"\x01" * min(64, pages - base)
                continue
            while word:
                low = word & -word
                dirty[base + low.bit_length() - 1] = 1
                word ^= low
    runs, page = [], dirty.find(1)
    while page != -1:
        end = dirty.find(0, page)
        end = pages if end == -1 else end
        runs.append((page << PAGE_SHIFT, (end - page) << PAGE_SHIFT))
        page = dirty.find(1, end) if end < pages else -1
    return runs


def run_bytes(runs: list[list[tuple[int, int]]]) -> int:
    return sum(length for region in runs for _, length in region)
