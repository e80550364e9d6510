"""Stage 2: rules JSON Schema cannot express (files, host limits, uniqueness across documents).

Every rule reads the plain document defensively (a value of the wrong type was already reported
by stage 1 and is skipped here), so all problems are reported in one run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..layout import CMDLINE_MAX, MiB
from .errors import SpecError
from .files import BUILTIN_PREFIX, BUILTIN_TESTGUEST, resolve
from .host import HostLimits
from .messages import describe, dotted, quote
from .sizes import memory_bytes, memory_problem
from .source import Document, Path

TYPE_CHECKING = False
if TYPE_CHECKING:                  # annotations only: typing costs ~2 ms a command
    from typing import Any

SECTOR_SIZE = 512          # disk images are whole 512-byte sectors (virtio-blk)
_SIZE_STRING = re.compile(r"^[0-9]+(Ki|Mi|Gi)$")


def get(data: Any, *path: str | int) -> Any:
    """The value at `path`, or None when any step is missing or of the wrong type."""
    for part in path:
        if isinstance(part, int):
            if not isinstance(data, list) or part >= len(data):
                return None
        elif not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _err(doc: Document, path: Path, message: str) -> SpecError:
    return SpecError(doc.file, *doc.at(path), f"{dotted(path)}: {message}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _usable(path: Any) -> bool:
    """A non-empty path string the OS can look up (NUL bytes were reported by the schema)."""
    return isinstance(path, str) and bool(path) and "\0" not in path


def _file_problem(doc: Document, path: Path, what: str, written: str) -> SpecError | None:
    if not _usable(written):
        return None
    full = resolve(doc.file, written)
    if not os.path.exists(full):
        return _err(doc, path,
                    f"{what} file {quote(written)} not found (looked for {quote(full)})")
    if not os.path.isfile(full):
        return _err(doc, path, f"{what} {quote(written)} is not a regular file ({quote(full)})")
    return None


def _kernel(doc: Document) -> list[SpecError]:
    out = []
    kpath = get(doc.data, "spec", "kernel", "path")
    if isinstance(kpath, str) and kpath:
        here = ("spec", "kernel", "path")
        if kpath.startswith(BUILTIN_PREFIX):
            if kpath != BUILTIN_TESTGUEST:
                out.append(_err(doc, here, f"unknown built-in kernel {describe(kpath)} "
                                           f"(the only one is {BUILTIN_TESTGUEST})"))
        elif (e := _file_problem(doc, here, "kernel", kpath)):
            out.append(e)
    initrd = get(doc.data, "spec", "kernel", "initrd")
    if isinstance(initrd, str) and initrd:
        if (e := _file_problem(doc, ("spec", "kernel", "initrd"), "initrd", initrd)):
            out.append(e)
    cmdline = get(doc.data, "spec", "kernel", "cmdline")
    if isinstance(cmdline, str) and len(cmdline.encode()) >= CMDLINE_MAX:
        out.append(_err(doc, ("spec", "kernel", "cmdline"),
                        f"is {len(cmdline.encode())} bytes; at most {CMDLINE_MAX - 1} fit"))
    return out


def _sizes(doc: Document, limits: HostLimits) -> list[SpecError]:
    out = []
    memory = get(doc.data, "spec", "memory")
    here = ("spec", "memory")
    size_ok = _is_int(memory) and 16 * MiB <= memory <= 1024 ** 4 and memory % MiB == 0
    if isinstance(memory, str) and _SIZE_STRING.match(memory):
        problem = memory_problem(memory)
        if problem:
            out.append(_err(doc, here, problem))
        size_ok = problem is None
    if size_ok and limits.mem_mib and memory_bytes(memory) // MiB > limits.mem_mib:
        out.append(_err(doc, here, f"{memory} exceeds this host's memory ({limits.mem_mib} MiB)"))
    vcpus = get(doc.data, "spec", "vcpus")
    if _is_int(vcpus) and 1 <= vcpus <= 254 and vcpus > limits.max_vcpus:
        out.append(_err(doc, ("spec", "vcpus"),
                        f"{vcpus} exceeds this host's limit of {limits.max_vcpus} vCPUs"))
    return out


def _triggers(doc: Document) -> list[SpecError]:
    out = []
    triggers = get(doc.data, "spec", "snapshots", "triggers")
    for i, t in enumerate(triggers if isinstance(triggers, list) else []):
        pattern = get(t, "match")
        if get(t, "trigger") == "console" and isinstance(pattern, str):
            from ..patterns import PatternError, compile_pattern
            try:
                compile_pattern(pattern)
            except PatternError as e:
                out.append(_err(doc, ("spec", "snapshots", "triggers", i, "match"),
                                f"invalid regular expression: {e}"))
    if get(doc.data, "spec", "snapshots", "compress") is not None and isinstance(
            get(doc.data, "spec", "snapshots", "incremental"), dict):
        out.append(_err(doc, ("spec", "snapshots", "compress"),
                        "compress and incremental cannot be combined yet: a diff is mapped over its "
                        "parent's uncompressed memory file"))
    return out


def _list_of_maps(doc: Document, *path: str) -> list[tuple[int, dict]]:
    items = get(doc.data, *path)
    return [(i, x) for i, x in enumerate(items) if isinstance(x, dict)] \
        if isinstance(items, list) else []


def _unique_names(doc: Document, section: str, what: str) -> list[SpecError]:
    out, seen = [], {}
    for i, item in _list_of_maps(doc, "spec", "devices", section):
        name = item.get("name")
        if not isinstance(name, str):
            continue
        if name in seen:
            first = f"{section}[{seen[name]}]"
            out.append(_err(doc, ("spec", "devices", section, i, "name"),
                            f"duplicate {what} name {describe(name)} (first at {first})"))
        else:
            seen[name] = i
    return out


def _disks(doc: Document) -> list[SpecError]:
    out = _unique_names(doc, "disks", "disk") + _unique_names(doc, "network", "interface")
    roots = 0
    for i, disk in _list_of_maps(doc, "spec", "devices", "disks"):
        here = ("spec", "devices", "disks", i, "path")
        if disk.get("root") is True:
            roots += 1
            if roots == 2:
                out.append(_err(doc, ("spec", "devices", "disks", i, "root"),
                                "only one disk may be the root disk"))
            cmdline = get(doc.data, "spec", "kernel", "cmdline")
            if roots == 1 and isinstance(cmdline, str) and any(w.startswith("root=") for w in cmdline.split()):
                out.append(_err(doc, ("spec", "devices", "disks", i, "root"),
                                "this disk is the root disk, so the kernel cmdline must not set root= itself"))
        path = disk.get("path")
        if not _usable(path):
            continue
        if (e := _file_problem(doc, here, "disk", path)):
            out.append(e)
            continue
        size = os.path.getsize(resolve(doc.file, path))
        if size % SECTOR_SIZE:
            out.append(_err(doc, here, f"disk {quote(path)} is {size} bytes, "
                                       f"not a multiple of {SECTOR_SIZE}"))
    return out


def _resources(doc: Document) -> list[SpecError]:
    """The VMM's cgroup must hold the guest's RAM and the VMM itself."""
    limit, memory = get(doc.data, "spec", "resources", "memory"), get(doc.data, "spec", "memory") or "128Mi"
    if not (isinstance(limit, str) and _SIZE_STRING.match(limit) and memory_problem(limit) is None):
        return []
    if not (isinstance(memory, str) and _SIZE_STRING.match(memory) and memory_problem(memory) is None):
        return []
    if memory_bytes(limit) < memory_bytes(memory) + 64 * MiB:
        return [_err(doc, ("spec", "resources", "memory"),
                     f"{limit} cannot hold the guest's {memory} and the VMM (at least {memory} + 64Mi)")]
    return []


def document_rules(doc: Document, limits: HostLimits) -> list[SpecError]:
    """Stage 2 checks that concern one document."""
    return _kernel(doc) + _sizes(doc, limits) + _triggers(doc) + _disks(doc) + _resources(doc) + _replicas(doc)


def _replica_count(doc: Document) -> int | None:
    n = get(doc.data, "spec", "replicas")
    return n if _is_int(n) and 1 <= n <= 256 else None


def _replicas(doc: Document) -> list[SpecError]:
    """Every clone (or the one VM) gets a valid name and a tap of its own once filled in."""
    from . import replicas
    name = get(doc.data, "metadata", "name")
    if not isinstance(name, str):
        return []
    nics = [(i, nic["tap"]) for i, nic in _list_of_maps(doc, "spec", "devices", "network")
            if isinstance(nic.get("tap"), str)]
    out = []
    for k, message in replicas.problems(name, _replica_count(doc), [tap for _, tap in nics]):
        path = ("metadata", "name") if k is None else ("spec", "devices", "network", nics[k][0], "tap")
        out.append(_err(doc, path, message))
    return out


def _declared(doc: Document, name: str) -> list[tuple[str, int | None]]:
    from .replicas import vm_names
    return vm_names(name, _replica_count(doc))


@dataclass(frozen=True)
class _Use:
    doc: Document
    path: Path
    vm: str

    def where(self) -> str:
        line, col = self.doc.at(self.path)
        return f"{self.doc.file}:{line}:{col}"


def _tap_clashes(doc: Document, declared: list[tuple[str, int | None]],
                 taps: dict[str, _Use]) -> list[tuple[Document, SpecError]]:
    """Each VM's taps (templates filled in for each clone) against every tap seen so far."""
    from .replicas import tap_name
    out = []
    for i, nic in _list_of_maps(doc, "spec", "devices", "network"):
        template = nic.get("tap")
        if not isinstance(template, str):
            continue
        for vm, index in declared:
            tap = tap_name(template, vm, index)
            use = _Use(doc, ("spec", "devices", "network", i, "tap"), vm)
            if tap in taps:
                if taps[tap].doc is doc:        # its clones share a tap: _replicas says so
                    continue
                owner = f"VM {quote(taps[tap].vm)} at {taps[tap].where()}"
                out.append((doc, _err(doc, use.path, f"tap {describe(tap)} is already used by {owner}")))
                break
            taps[tap] = use
    return out


def cross_rules(docs: list[Document]) -> list[tuple[Document, SpecError]]:
    """Stage 2 checks across every document of one invocation: names, disks and taps unique."""
    out: list[tuple[Document, SpecError]] = []
    names: dict[str, _Use] = {}
    disks: dict[str, list[tuple[_Use, bool]]] = {}
    taps: dict[str, _Use] = {}
    for doc in docs:
        name = get(doc.data, "metadata", "name")
        vm = name if isinstance(name, str) else f"document {doc.index + 1}"
        declared = _declared(doc, name) if isinstance(name, str) else []
        for clone, _ in declared:
            use = _Use(doc, ("metadata", "name"), clone)
            if clone in names:
                earlier = names[clone]
                set_name = get(earlier.doc.data, "metadata", "name")
                first = earlier.where() + (f" as a clone of {describe(set_name)}" if set_name != clone else "")
                what = f"duplicate VM name {describe(clone)}" + (f" (a clone of {describe(name)})" if clone != name else "")
                out.append((doc, _err(doc, use.path, f"{what} (first defined at {first})")))
                break
            else:
                names[clone] = use
        for i, disk in _list_of_maps(doc, "spec", "devices", "disks"):
            path = disk.get("path")
            if _usable(path):
                use = _Use(doc, ("spec", "devices", "disks", i, "path"), vm)
                writable = disk.get("readOnly") is not True
                key = os.path.realpath(resolve(doc.file, path))
                for earlier, earlier_writable in disks.get(key, []):
                    if writable or earlier_writable:
                        owner = f"VM {quote(earlier.vm)} at {earlier.where()}"
                        why = (f"is writable here but also used by {owner}" if writable
                               else f"is written by {owner}")
                        out.append((doc, _err(doc, use.path, f"disk {quote(path)} {why}: "
                                                             "a writable disk belongs to one VM")))
                        break
                disks.setdefault(key, []).append((use, writable))
        out.extend(_tap_clashes(doc, declared, taps))
    return out
