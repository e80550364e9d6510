"""What volt-vmm answers on its API socket: VM state, pause/resume, actions.

The HTTP side lives in `volt_spec.api.server`; this module maps its calls onto the
`Machine`. Imported only after the vCPUs run, so it never delays boot.
"""

from __future__ import annotations

import os
import time

from ..api.errors import ApiError
from ..kvm.flavour import kvm_flavour
from .machine import InvalidStateTransition, Machine


def snapshot_path(body: object, state_dir: str, key: str = "snapshot_path", may_be_root: bool = False) -> str:
    """The API body's snapshot directory, if absolute and under the VMM's state directory (after
    resolving symlinks); anything else is a 400. Then a client of the API can write guest memory
    only where this VMM keeps its state, never over a host file."""
    from ..names import BadName, inside
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{key} must be a non-empty string (an absolute path under {state_dir})")
    if "\0" in value or not os.path.isabs(value):
        raise ApiError(400, f"{key} {value!r} must be an absolute path under {state_dir}")
    if may_be_root and os.path.realpath(value) == os.path.realpath(state_dir):
        return os.path.realpath(value)
    try:
        return inside(state_dir, value, key)
    except BadName as e:
        raise ApiError(400, f"{e} (this VMM's state directory; see volt-vmm --state-dir)") from None


BOOT_SOURCE_FIELDS = {"kernel_image_path": "kernel", "initrd_path": "initrd", "boot_args": "cmdline"}
MACHINE_CONFIG_FIELDS = {"vcpu_count": "vcpus", "mem_size_mib": "memory_mib"}


def _renamed(body: object, names: dict[str, str], what: str) -> dict:
    """A Firecracker-named API body as a config section's fields (unknown fields: a 400)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"{what} must be a JSON object")
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise ApiError(400, f"{what}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    return {names[k]: v for k, v in body.items()}


class VmmApi:
    """The handler object `ApiServer` routes requests to."""

    def __init__(self, machine: Machine, name: str, state_dir: str) -> None:
        self.machine = machine
        self.state_dir = state_dir
        self.name = name
        self.started_at = time.time()
        self.flavour = kvm_flavour()

    def get_vm(self) -> dict:
        m, c = self.machine, self.machine.config
        boot = m.boot_source
        return {
            "name": self.name,
            "state": m.state,
            "pid": os.getpid(),
            "config": {"kernel": boot.kernel if boot else "", "initrd": boot.initrd if boot else None,
                       "cmdline": boot.cmdline if boot else "", "memory_mib": c.memory_mib, "vcpus": c.vcpus,
                       "boot": m.boot_protocol},
            "boot": {"booted_from": m.booted_from, "started_at": self.started_at,
                     "uptime_s": round(time.time() - self.started_at, 3)},
            "kvm": self.flavour,
            "vmgenid": m.generation_id.hex(),
            "disk_copies": dict(m.disk_copies),
            "policy": m.policy.status() if m.policy else None,
            "counters": dict(m.devices.counters(), vcpu_exits=list(m.exit_counts)),
            **({"timing": dict(m.timing, run_entered_ns=list(m.run_entered_ns))} if m.timing is not None else {}),
        }

    def set_state(self, state: str) -> None:
        try:
            if state == "Paused":
                self.machine.pause(keep=True)
            elif state == "Resumed":
                self.machine.resume()
            else:
                raise ApiError(400, f"state must be \"Paused\" or \"Resumed\", not {state!r}")
        except InvalidStateTransition as e:
            raise ApiError(400, str(e)) from None
        except RuntimeError as e:
            raise ApiError(500, str(e)) from None

    def action(self, action_type: str, body: dict) -> None:
        if action_type == "SendCtrlAltDel":
            if self.machine.policy is not None:
                self.machine.policy.before_stop()        # the `stop` trigger, before the guest goes
            self.machine.devices.send_ctrl_alt_del()
            return
        raise ApiError(400, f"unknown action_type {action_type!r} (supported: SendCtrlAltDel)")

    def snapshot_create(self, body: dict) -> dict | None:
        """Pause, save, resume (unless resume_vm is false); answer once it is complete on disk.

        A snapshot whose meta says `expire: true` (volt snapshot --expire) is governed by the
        policy's retain rules like a policy snapshot: they are applied before the answer."""
        from ..snapshot.format import SnapshotError
        from . import persist
        resume = body.get("resume_vm", True)
        meta = body.get("meta") or {}
        if not isinstance(meta, dict):
            raise ApiError(400, "meta must be an object")
        from ..fsutil import local_path
        dest = snapshot_path(body, self.state_dir)
        diff = self._wants_diff(body)
        try:
            with self.machine.snapshot_lock:
                result = persist.save(self.machine, local_path(dest), meta, resume=resume is not False, diff=diff)
        except SnapshotError as e:
            raise ApiError(400, str(e)) from None
        except OSError as e:
            raise ApiError(500, f"writing the snapshot failed: {e.strerror or e}") from None
        if meta.get("expire") is True and self.machine.policy is not None:
            self.machine.policy.apply_retention()
        return dict(result, path=dest) if isinstance(result, dict) and "path" in result else result

    def _wants_diff(self, body: dict) -> bool:
        """`snapshot_type` "Diff" (Firecracker's word): the pages changed since the last snapshot
        taken or restored, when the VM tracks dirty pages; `full_every` K makes every Kth a full one."""
        kind = body.get("snapshot_type", "Full")
        if kind not in ("Full", "Diff"):
            raise ApiError(400, f"snapshot_type must be \"Full\" or \"Diff\", not {kind!r}")
        every = body.get("full_every")
        if every is not None and (type(every) is not int or every < 1):
            raise ApiError(400, f"full_every must be a positive integer, not {every!r}")
        if kind == "Full":
            return False
        if self.machine.dirty is None:
            raise ApiError(400, "this VM does not track dirty pages, so it cannot take a diff snapshot "
                                "(its spec needs snapshots.incremental)")
        from .persist import diff_wanted
        return diff_wanted(self.machine, every)

    def snapshot_load(self, body: dict, fds: tuple = ()) -> dict | None:
        raise ApiError(400, "PUT /snapshot/load is only valid before boot, and this VM has booted")

    def route(self, method: str, path: str, body: dict | None) -> tuple[int, dict | None]:
        if path == "/policy" and method == "PUT":
            self._put_policy(body)
            return 204, None
        if path == "/policy" and method == "GET":
            return 200, self.machine.policy.status() if self.machine.policy else {}
        raise ApiError(404, f"no route for {method} {path}")


    def _put_policy(self, body: object) -> None:
        """A new snapshot policy, all or nothing: a bad field is a 400 and the old policy stays."""
        from .builder import attach_policy
        from .config import PolicyConfig, VmmConfigError
        from ..fsutil import local_path
        if isinstance(body, dict) and body.get("snapshot_dir") is not None:
            body = dict(body, snapshot_dir=local_path(snapshot_path(body, self.state_dir, "snapshot_dir", may_be_root=True)))
        try:
            policy = PolicyConfig.from_dict(body)
        except VmmConfigError as e:
            raise ApiError(400, f"bad policy: {e}") from None
        if self.machine.policy is None:
            attach_policy(self.machine, policy)
        else:
            self.machine.policy.set_policy(policy)


class ConfigApi:
    """The API of a volt-vmm started with --api-sock alone: configure, then boot or load a snapshot.

    Legal only before the VM exists (Firecracker's pre-boot API). Once InstanceStart or a
    snapshot load has built and launched the VM, `started` is set and main() swaps in `VmmApi`.
    """

    def __init__(self, kvm, config) -> None:
        from .sync import Flag
        self.kvm, self.config = kvm, config
        self.boot_source: dict = {}
        self.machine_config: dict = {"vcpus": 1, "memory_mib": 128}
        self.started = Flag()
        self.machine: Machine | None = None

    def get_vm(self) -> dict:
        return {"name": self.config.name, "state": "NotStarted", "pid": os.getpid(),
                "config": {"boot_source": self.boot_source, "machine_config": self.machine_config}}

    def route(self, method: str, path: str, body: dict | None):
        from .config import BootSourceConfig, MachineConfig, VmmConfigError
        try:
            if path == "/boot-source" and method == "PUT":
                self._once()
                fields = _renamed(body, BOOT_SOURCE_FIELDS, "boot-source")
                BootSourceConfig.from_dict(fields, "boot-source")
                self.boot_source = fields
                return 204, None
            if path == "/machine-config" and method in ("PUT", "PATCH"):
                self._once()
                fields = dict(self.machine_config, **_renamed(body, MACHINE_CONFIG_FIELDS, "machine-config"))
                MachineConfig.from_dict(fields, "machine-config")
                self.machine_config = fields
                return 204, None
        except VmmConfigError as e:
            raise ApiError(400, str(e)) from None
        raise ApiError(404, f"no route for {method} {path}")

    def _once(self) -> None:
        if self.started.is_set():
            raise ApiError(400, "the VM has already started")

    def action(self, action_type: str, body: dict) -> None:
        if action_type != "InstanceStart":
            raise ApiError(400, f"before boot only InstanceStart is possible, not {action_type!r}")
        self._once()
        if not self.boot_source:
            raise ApiError(400, "PUT /boot-source first")
        from .builder import build, launch
        from .config import BootSourceConfig, MachineConfig, VmmConfigError
        self.config.boot_source = BootSourceConfig.from_dict(self.boot_source)
        self.config.machine = MachineConfig.from_dict(self.machine_config)
        try:
            machine = build(self.kvm, self.config)
        except (VmmConfigError, OSError, ValueError) as e:
            raise ApiError(400, str(e)) from None
        launch(machine)
        self._started(machine)

    def snapshot_load(self, body: dict, fds: tuple = ()) -> dict | None:
        if not isinstance(body.get("snapshot_path"), str):
            raise ApiError(400, "this VMM loads a snapshot by snapshot_path; fds are for a warm VMM (volt-vmm --warm)")
        self._once()
        from ..snapshot.format import SnapshotError
        from .builder import build_from_snapshot, launch
        from .config import RestoreConfig
        source = snapshot_path(body, self.config.api.state_dir)
        clock = body.get("clock", "continue")
        try:
            self.config.restore = RestoreConfig.from_dict({"snapshot_dir": source, "clock": clock})
            machine = build_from_snapshot(self.kvm, self.config)
        except (SnapshotError, ValueError) as e:          # ValueError: VirtioError, VmmConfigError
            raise ApiError(400, str(e)) from None
        launch(machine, restored=True)
        if body.get("resume_vm") is False:
            machine.pause(keep=True)
        self._started(machine)
        return None

    def _started(self, machine: Machine) -> None:
        self.machine = machine
        self.started.set()

    def snapshot_create(self, body: dict) -> dict | None:
        raise ApiError(400, "there is no VM to snapshot yet")
