"""The names volt turns into paths, one rule each, checked before any filesystem call.

A VM name is the spec's DNS label; a snapshot id is the schema's `snapshotId` (the same
patterns as vm.schema.json, which a test holds them to). Neither can hold '/', start with
'.', or be empty, so a checked name is always one path component below its directory;
`inside` checks a resolved path stays there anyway (symlinks in what lies above).
"""

from __future__ import annotations

import os
import re

VM_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
SNAPSHOT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# What `snapshots.restore` may name: an id, or VM/ID for another VM's (runner/snapshots.locate).
SNAPSHOT_REF = re.compile(f"^({VM_NAME.pattern[1:-1]}/)?{SNAPSHOT_ID.pattern[1:]}")


class BadName(ValueError):
    """A name or path from a user, a spec, a snapshot or the API that volt will not use."""


def vm_name(name: str) -> str:
    if not isinstance(name, str) or not VM_NAME.match(name):
        raise BadName(f"{name!r} is not a VM name (lowercase letters, digits and '-', at most 63, "
                      f"starting and ending with a letter or digit)")
    return name


def snapshot_id(snap_id: str) -> str:
    if not isinstance(snap_id, str) or not SNAPSHOT_ID.match(snap_id):
        raise BadName(f"{snap_id!r} is not a snapshot id (letters, digits, '.', '_', ':', '-', at most 128, "
                      f"starting with a letter or digit)")
    return snap_id


def inside(base: str | os.PathLike, path: str | os.PathLike, what: str = "path") -> str:
    """`path` made absolute and resolved, if it lies strictly under `base` (resolved); else BadName."""
    root = os.path.realpath(base)
    full = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, full]) != root or full == root:
        raise BadName(f"{what} {os.fspath(path)!r} is outside {root}")
    return full
