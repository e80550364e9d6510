"""Diff snapshots: finding a diff's parents and mapping the chain as one guest memory.

A diff's state.json records, in `memory.diff`, its parent's id (a sibling directory: a plain
name, never a path) and the parent's memory checksum, and `memory.extents` lists the file
(offset, length) runs it holds. A restore maps the chain's full snapshot MAP_PRIVATE and each
diff's extents over it, oldest first, MAP_FIXED|MAP_PRIVATE: pages still load on demand and
stay shared in the page cache, nothing is copied. Every file of the chain gets the checks a full
snapshot's memory gets (plain name, regular file, exact size, fingerprint or checksum), each
parent must be what its child was taken on, and every extent must be page-aligned and inside
one region of the common layout: a snapshot is untrusted input.
"""

from __future__ import annotations

import os

from .format import SnapshotError, memory_path, parse, plain_file_name, read_raw, verify

MAX_DEPTH = 64                    # diffs in one chain; `volt snapshots squash` makes a long one short
MAX_EXTENTS = 32768               # mappings a chain may add (vm.max_map_count is 65530 by default)
PAGE = 4096


class Link:
    """One snapshot of a chain: its directory, state and the raw bytes the CRC covers."""

    __slots__ = ("dir", "state", "raw", "doc", "where")

    def __init__(self, snapshot_dir: str, raw: bytes, doc: dict, state: dict, where: str) -> None:
        self.dir, self.raw, self.doc, self.state, self.where = snapshot_dir, raw, doc, state, where

    @property
    def memory(self) -> dict:
        return self.state["memory"]

    def verify(self) -> None:
        verify(self.raw, self.doc, self.state, self.where)


def is_diff(state: dict) -> bool:
    memory = state.get("memory")
    return isinstance(memory, dict) and memory.get("diff") is not None


def parents(snapshot_dir: str, state: dict) -> list[Link]:
    """The snapshots a diff stands on, nearest first, each CRC-checked, laid out as the diff, and
    holding the memory its child recorded; the last is a full snapshot."""
    out: list[Link] = []
    child_dir, child = snapshot_dir, state
    seen = {os.path.basename(os.path.normpath(snapshot_dir))}
    while is_diff(child):
        diff = child["memory"]["diff"]
        if not isinstance(diff, dict) or not plain_file_name(diff.get("parent")):
            raise SnapshotError(f"{child_dir}: state.json names no valid parent snapshot for its diff")
        if len(out) >= MAX_DEPTH:
            raise SnapshotError(f"{snapshot_dir}: a chain of more than {MAX_DEPTH} diffs (squash it: "
                                f"volt snapshots squash)")
        if diff["parent"] in seen:
            raise SnapshotError(f"{snapshot_dir}: its chain of parents loops back to {diff['parent']}")
        seen.add(diff["parent"])
        parent_dir = os.path.join(os.path.dirname(os.path.normpath(snapshot_dir)), diff["parent"])
        try:
            raw, where = read_raw(parent_dir)
        except SnapshotError:
            raise SnapshotError(f"{child_dir}: its parent snapshot {diff['parent']} is missing") from None
        doc, parent = parse(raw, where)
        verify(raw, doc, parent, where)
        memory = parent.get("memory") if isinstance(parent.get("memory"), dict) else {}
        known = [memory.get("sha256"), *(memory.get("squashed_from") or [])]    # squash() keeps it valid
        if diff.get("parent_sha256") not in known:
            raise SnapshotError(f"{child_dir}: its parent snapshot {diff['parent']} is not the one it was taken on "
                                f"(memory checksum differs)")
        if (memory.get("size"), memory.get("regions")) != (child["memory"]["size"], child["memory"]["regions"]):
            raise SnapshotError(f"{child_dir}: its parent snapshot {diff['parent']} has another memory layout")
        out.append(Link(parent_dir, raw, doc, parent, where))
        child_dir, child = parent_dir, parent
    return out


def check_extents(layout: dict, where: str) -> list[tuple[int, int, int]]:
    """A diff's extents as (region index, offset in the region, length): page-aligned, each inside
    one region, ascending and not overlapping."""
    extents = layout.get("extents")
    if not isinstance(extents, list) or len(extents) > MAX_EXTENTS:
        raise SnapshotError(f"{where}: a diff's extents must be a list of at most {MAX_EXTENTS}")
    regions = [(r["offset"], r["size"]) for r in layout["regions"]]
    out, last_end = [], 0
    for e in extents:
        if (not isinstance(e, list) or len(e) != 2 or not all(type(v) is int for v in e)
                or e[0] % PAGE or e[1] % PAGE or e[1] <= 0 or e[0] < last_end):
            raise SnapshotError(f"{where}: bad diff extent {e!r} (page-aligned [offset, length], ascending)")
        index = next((i for i, (off, size) in enumerate(regions) if off <= e[0] and e[0] + e[1] <= off + size), None)
        if index is None:
            raise SnapshotError(f"{where}: diff extent {e!r} is not inside one memory region")
        out.append((index, e[0] - regions[index][0], e[1]))
        last_end = e[0] + e[1]
    return out


def map_diffs(memory, diffs: list[Link]) -> list[int]:
    """Map each diff's extents over `memory` (the chain's full snapshot, mapped), oldest first;
    returns the fds opened (the caller checks them and memory.close() closes them)."""
    from .memory_file import MemoryFileError, open_memory_file
    total = 0
    for link in diffs:
        extents = check_extents(link.memory, link.where)
        total += len(extents)
        if total > MAX_EXTENTS:
            raise SnapshotError(f"{link.dir}: its chain maps more than {MAX_EXTENTS} extents (squash it)")
        path = memory_path(link.dir, link.memory)
        try:
            fd = open_memory_file(path)
        except MemoryFileError as e:
            raise SnapshotError(str(e)) from None
        memory.extra_fds.append(fd)
        size = os.fstat(fd).st_size
        if size != link.memory["size"]:
            raise SnapshotError(f"memory file {path} holds {size} bytes; the snapshot recorded {link.memory['size']}")
        for index, offset, length in extents:
            region = memory.regions[index]
            region.map_extent_over(fd, link.memory["regions"][index]["offset"] + offset, offset, length)
    return list(memory.extra_fds)

