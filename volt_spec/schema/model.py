"""`VmSpec`: one validated VM spec, normalised (defaults filled in, paths absolute), with hashes.

`machine_hash` covers what needs a new VM when it changes (kernel and initrd by content, command
line, boot protocol, vCPUs, memory, devices); `spec_hash` covers the whole document.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from ..layout import MiB
from ..jail.config import default_memory_limit
from .files import BUILTIN_TESTGUEST, resolve
from .sizes import memory_bytes

TYPE_CHECKING = False
if TYPE_CHECKING:                  # annotations only: typing costs ~2 ms a command
    from typing import Any

DEFAULT_MEMORY = "128Mi"
DEFAULT_READY_MARKER = "VOLT-READY"     # guest/protocol.py READY_RE: the test guest's ready line
DEFAULT_RETAIN_COUNT = 3
_HASH_CHUNK = 1 << 20


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes for hashing (sorted keys, no whitespace)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode()


_content_cache: dict[tuple, str] = {}


def content_hash(path: str | None) -> str | None:
    """sha256 of a kernel/initrd file (cached by path, size and mtime).

    builtin:testguest hashes as the guest's source digest; a vanished file as "missing".
    """
    if path is None:
        return None
    if path == BUILTIN_TESTGUEST:
        return f"testguest-src:{_testguest_digest()}"
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _content_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
        _content_cache[key] = h.hexdigest()
    return _content_cache[key]


def _testguest_digest() -> str:
    """The test guest's source digest, hashed again only when a source file's name, size or mtime
    changed (~130 KiB, and apply asks several times a VM)."""
    from ..guest import build
    key = ("builtin", *sorted((e.name, st.st_size, st.st_mtime_ns) for e in os.scandir(build.SRC_DIR)
                              if e.name.endswith(build.SOURCE_SUFFIXES) for st in (e.stat(),)))
    if key not in _content_cache:
        _content_cache[key] = build.source_digest()
    return _content_cache[key]


@dataclass(frozen=True)
class VmSpec:
    """A validated VM: what the runner creates, compares and stores."""

    name: str
    labels: dict[str, str]
    source: str                 # absolute path of the file it came from
    kernel: str                 # absolute path, or "builtin:testguest"
    initrd: str | None
    cmdline: str
    boot: str | None
    vcpus: int
    memory_mib: int
    running: bool
    serial_log: bool
    snapshots: dict
    devices: dict
    document: dict              # the plain document as written
    resources: dict = None      # the VMM's cgroup limits (defaults applied): memory_bytes, cpus, pids
    restart_policy: str = "Always"   # Always | OnFailure | Never: what the agent does when it ends
    set_name: str = ""          # metadata.name: the VM's own, or its clones' (NAME-0 ...) with spec.replicas
    replica: int | None = None  # a clone's index; None for a VM without spec.replicas

    def __hash__(self) -> int:            # dict fields are unhashable; name + file identify a VM
        return hash((self.name, self.source))

    def machine_hash(self) -> str:
        """sha256 over what needs a NEW VM when it changes."""
        machine = {
            "kernel": [self.kernel, content_hash(self.kernel)],
            "initrd": [self.initrd, content_hash(self.initrd)],
            "cmdline": self.cmdline, "boot": self.boot, "vcpus": self.vcpus,
            "memory_mib": self.memory_mib, "devices": self.devices,
        }
        return hashlib.sha256(canonical_json(machine)).hexdigest()

    def shape_hash(self) -> str:
        """sha256 over the machine as its guest sees it: the machine hash without what binds it to
        a host (disk paths, taps, MACs, kernel paths: their contents count). A snapshot of one VM
        fits another VM of the same shape (restore: OTHER/ID, replicas)."""
        devices = {"disks": [{k: d[k] for k in ("name", "readOnly", "root")} for d in self.devices["disks"]],
                   "network": [n["name"] for n in self.devices["network"]],
                   "virtioAnnounce": self.devices["virtioAnnounce"]}
        shape = {"kernel": content_hash(self.kernel), "initrd": content_hash(self.initrd), "cmdline": self.cmdline,
                 "boot": self.boot, "vcpus": self.vcpus, "memory_mib": self.memory_mib, "devices": devices}
        return hashlib.sha256(canonical_json(shape)).hexdigest()

    def spec_hash(self) -> str:
        """sha256 over the canonical document and the machine hash; a clone's leaves out the replica
        count (3 -> 5 adds two clones and leaves the first three unchanged)."""
        document = self.document
        if self.replica is not None:
            document = dict(document, spec={k: v for k, v in document["spec"].items() if k != "replicas"})
        return hashlib.sha256(canonical_json([document, self.machine_hash()])).hexdigest()


DEFAULT_FULL_EVERY = 10             # snapshots.incremental.fullEvery


def _snapshots(raw: dict) -> dict:
    """The spec's snapshot section as written, defaults filled in (runner/vmconfig.py maps it to
    the VMM's policy, durations parsed there)."""
    triggers = []
    for t in raw.get("triggers", []):
        t = dict(t)
        if t["trigger"] == "ready":
            t.setdefault("marker", DEFAULT_READY_MARKER)
        triggers.append(t)
    retain = dict(raw.get("retain", {}))
    retain.setdefault("count", DEFAULT_RETAIN_COUNT)
    retain.setdefault("maxAge", None)
    restore = raw.get("restore", "latest")
    if isinstance(restore, dict):            # {id: X, fallback: boot|error}
        restore, fallback = restore["id"], restore.get("fallback", "error")
    else:                                    # latest/never boot when there is nothing; an id does not
        fallback = "boot" if restore in ("latest", "never") else "error"
    return {"restore": restore, "fallback": fallback, "clock": raw.get("clock", "continue"),
            "triggers": triggers, "retain": retain, **({"pool": raw["pool"]} if raw.get("pool") else {}),
            **({"incremental": {"fullEvery": raw["incremental"].get("fullEvery", DEFAULT_FULL_EVERY)}}
               if isinstance(raw.get("incremental"), dict) else {}),
            **({"compress": raw["compress"]} if raw.get("compress") else {})}


def _devices(source: str, raw: dict, vm: str, replica: int | None) -> dict:
    """The devices of one VM; a clone's writable disks are marked `clone` (the runner gives each
    clone its own copy, seeded from `path`), its taps and MACs are its own."""
    from .replicas import clone_mac, tap_name
    disks = [{"name": d["name"], "path": resolve(source, d["path"]),
              "readOnly": d.get("readOnly", False), "root": d.get("root", False),
              **({"clone": True} if replica is not None and not d.get("readOnly", False) else {})}
             for d in raw.get("disks", [])]
    network = [{"name": n["name"], "tap": tap_name(n["tap"], vm, replica),
                "mac": n.get("mac") if replica is None else clone_mac(vm, n["name"], n.get("mac"), replica)}
               for n in raw.get("network", [])]
    return {"serial": {"log": raw.get("serial", {}).get("log", True)},
            "disks": disks, "network": network, "virtioAnnounce": raw.get("virtioAnnounce", "acpi")}


def build_specs(source: str, document: dict) -> list[VmSpec]:
    """The VMs a document that passed both validation stages declares: itself, or its clones."""
    from .replicas import vm_names
    return [build_spec(source, document, name, index)
            for name, index in vm_names(document["metadata"]["name"], document["spec"].get("replicas"))]


def build_spec(source: str, document: dict, name: str | None = None, replica: int | None = None) -> VmSpec:
    """One VM of a document that passed both validation stages (`name`, `replica`: one of its clones)."""
    source = os.path.abspath(source)
    meta, spec = document["metadata"], document["spec"]
    name = name or meta["name"]
    kernel = spec["kernel"]
    path = kernel["path"]
    initrd = kernel.get("initrd")
    devices = _devices(source, spec.get("devices", {}), name, replica)
    return VmSpec(
        name=name, labels=dict(meta.get("labels", {})), source=source,
        kernel=path if path == BUILTIN_TESTGUEST else resolve(source, path),
        initrd=resolve(source, initrd) if initrd else None,
        cmdline=kernel.get("cmdline", ""), boot=kernel.get("boot"),
        vcpus=spec.get("vcpus", 1),
        memory_mib=memory_bytes(spec.get("memory", DEFAULT_MEMORY)) // MiB,
        running=spec.get("running", True), serial_log=devices["serial"]["log"],
        snapshots=_snapshots(spec.get("snapshots", {})), devices=devices, document=document,
        resources=_resources(spec), restart_policy=spec.get("restartPolicy", "Always"),
        set_name=meta["name"], replica=replica,
    )


def _resources(spec: dict) -> dict:
    raw = spec.get("resources", {})
    guest = memory_bytes(spec.get("memory", DEFAULT_MEMORY))
    return {"memory_bytes": memory_bytes(raw["memory"]) if "memory" in raw else default_memory_limit(guest),
            "cpus": float(raw.get("cpus", spec.get("vcpus", 1))), "pids": int(raw.get("pids", 256))}
