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


BOOT_SOURCE_FIELDS = {"kernel_image_path", "initrd_path", "boot_args"}
MACHINE_CONFIG_FIELDS = {"vcpu_count", "mem_size_mib"}
CMDLINE_LIMIT = 2047                      # as the spec's schema: x86 COMMAND_LINE_SIZE less its NUL


def _known_fields(body: object, known: set[str], what: str) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, f"{what} must be a JSON object")
    unknown = sorted(set(body) - known)
    if unknown:
        raise ApiError(400, f"{what}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return body


def checked_boot_source(body: object) -> dict:
    """PUT /boot-source, checked whole by the spec's rules before any of it is kept."""
    body = _known_fields(body, BOOT_SOURCE_FIELDS, "boot-source")
    for key in ("kernel_image_path", "initrd_path"):
        value = body.get(key)
        if (key == "kernel_image_path" or value is not None) and not (isinstance(value, str) and value
                                                                      and "\0" not in value):
            raise ApiError(400, f"boot-source: {key} must be a non-empty path without NUL")
    args = body.get("boot_args", "")
    if not isinstance(args, str) or len(args) > CMDLINE_LIMIT or any(ord(c) < 32 or ord(c) == 127 for c in args):
        raise ApiError(400, f"boot-source: boot_args must be a string of at most {CMDLINE_LIMIT} characters "
                            f"without NUL, newlines, tabs or other control characters")
    return dict(body)


def checked_machine_config(body: object) -> dict:
    body = _known_fields(body, MACHINE_CONFIG_FIELDS, "machine-config")
    for key, value in body.items():
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ApiError(400, f"machine-config: {key} must be a positive integer")
    return dict(body)


class VmmApi:
    """The handler object `ApiServer` routes requests to."""

    def __init__(self, machine: Machine, name: str, boot_protocol: str, booted_from: str = "cold",
                 state_dir: str = "") -> None:
        self.machine = machine
        self.state_dir = state_dir
        self.name = name
        self.boot_protocol = boot_protocol
        self.booted_from = booted_from
        self.started_at = time.time()
        self.flavour = kvm_flavour()
        self.policy = machine.policy

    def get_vm(self) -> dict:
        m, c = self.machine, self.machine.config
        return {
            "name": self.name,
            "state": m.state,
            "pid": os.getpid(),
            "config": {"kernel": c.kernel, "initrd": c.initrd, "cmdline": c.cmdline,
                       "memory_mib": c.memory_mib, "vcpus": c.vcpus, "boot": self.boot_protocol},
            "boot": {"booted_from": self.booted_from, "started_at": self.started_at,
                     "uptime_s": round(time.time() - self.started_at, 3)},
            "kvm": self.flavour,
            "policy": self.machine.policy.status() if self.machine.policy else None,
            "counters": {
                "serial_bytes_out": getattr(m.out, "count", 0),
                "vcpu_exits": list(m.exit_counts),
                "unknown_pio": sum(m.pio.unknown.values()),
                "unknown_mmio": sum(m.mmio.unknown.values()),
                "virtio": m.virtio.counters() if m.virtio is not None else {},
            },
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
            self.machine.send_ctrl_alt_del()
            return
        raise ApiError(400, f"unknown action_type {action_type!r} (supported: SendCtrlAltDel)")

    def snapshot_create(self, body: dict) -> dict | None:
        """Pause, save, resume (unless resume_vm is false); answer once it is complete on disk."""
        from ..snapshot.create import create_snapshot
        from ..snapshot.format import SnapshotError
        resume = body.get("resume_vm", True)
        meta = body.get("meta") or {}
        if not isinstance(meta, dict):
            raise ApiError(400, "meta must be an object")
        dest = snapshot_path(body, self.state_dir)
        try:
            with self.machine.snapshot_lock:
                result = create_snapshot(self.machine, dest, meta, resume=resume is not False)
        except SnapshotError as e:
            raise ApiError(400, str(e)) from None
        except OSError as e:
            raise ApiError(500, f"writing the snapshot failed: {e.strerror or e}") from None
        self.last_snapshot = result
        return result

    def snapshot_load(self, body: dict) -> dict | None:
        raise ApiError(400, "PUT /snapshot/load is only valid before boot, and this VM has booted")

    def route(self, method: str, path: str, body: dict | None) -> tuple[int, dict | None]:
        if path == "/policy" and method == "PUT":
            if not isinstance(body, dict):
                raise ApiError(400, "the policy must be a JSON object")
            if body.get("snapshot_dir") is not None:
                body = dict(body, snapshot_dir=snapshot_path(body, self.state_dir, "snapshot_dir", may_be_root=True))
            try:
                if self.machine.policy is None:
                    from .policy import PolicyEngine
                    self.machine.policy = PolicyEngine(self.machine, body, self.booted_from)
                    self.machine.add_console_tap(self.machine.policy.on_console)
                else:
                    self.machine.policy.set_policy(body)
            except Exception as e:  # noqa: BLE001 - a bad regex or field: the old policy stays
                raise ApiError(400, f"bad policy: {e}") from None
            return 204, None
        if path == "/policy" and method == "GET":
            return 200, self.machine.policy.status() if self.machine.policy else {}
        raise ApiError(404, f"no route for {method} {path}")


class ConfigApi:
    """The API of a volt-vmm started with --api-sock alone: configure, then boot or load a snapshot.

    Legal only before the VM exists (Firecracker's pre-boot API). Once InstanceStart or
    a snapshot load succeeds, `started` is set and main() swaps in `VmmApi`.
    """

    def __init__(self, kvm, opts: dict) -> None:
        from .sync import Flag
        self.kvm, self.opts = kvm, opts
        self.boot_source: dict = {}
        self.machine_config: dict = {"vcpu_count": 1, "mem_size_mib": 128}
        self.started = Flag()
        self.result = None

    def get_vm(self) -> dict:
        return {"name": self.opts.get("name", "vm"), "state": "NotStarted", "pid": os.getpid(),
                "config": {"boot_source": self.boot_source, "machine_config": self.machine_config}}

    def route(self, method: str, path: str, body: dict | None):
        if path == "/boot-source" and method == "PUT":
            self._once()
            self.boot_source = checked_boot_source(body)
            return 204, None
        if path == "/machine-config" and method in ("PUT", "PATCH"):
            self._once()
            self.machine_config.update(checked_machine_config(body))
            return 204, None
        raise ApiError(404, f"no route for {method} {path}")

    def _policy(self) -> dict:
        """The --policy this VMM was started with, for the VM it builds (started before its vCPUs)."""
        return {"policy": self.opts["policy"]} if "policy" in self.opts else {}

    def _once(self) -> None:
        if self.started.is_set():
            raise ApiError(400, "the VM has already started")

    def action(self, action_type: str, body: dict) -> None:
        if action_type != "InstanceStart":
            raise ApiError(400, f"before boot only InstanceStart is possible, not {action_type!r}")
        self._once()
        if not self.boot_source:
            raise ApiError(400, "PUT /boot-source first")
        from .config import VmmConfigError
        from .main import boot, config_from
        opts = {"kernel": self.boot_source["kernel_image_path"],
                "initrd": self.boot_source.get("initrd_path"),
                "cmdline": self.boot_source.get("boot_args", ""),
                "memory": self.machine_config["mem_size_mib"], "vcpus": self.machine_config["vcpu_count"],
                **self._policy()}
        try:
            machine, protocol = boot(self.kvm, config_from(opts, self.kvm), opts)
        except (VmmConfigError, OSError, ValueError) as e:
            raise ApiError(400, str(e)) from None
        self.result = (machine, protocol, "cold")
        self.started.set()

    def snapshot_load(self, body: dict) -> dict | None:
        self._once()
        from ..snapshot.format import SnapshotError
        from .main import restore
        from .main import state_dir
        source = snapshot_path(body, state_dir(self.opts))
        clock = body.get("clock", "continue")
        try:
            machine, protocol, booted_from = restore(self.kvm, source, clock, self._policy())
        except (SnapshotError, ValueError) as e:          # ValueError: VirtioError, VmmConfigError
            raise ApiError(400, str(e)) from None
        if body.get("resume_vm") is False:
            machine.pause(keep=True)
        self.result = (machine, protocol, booted_from)
        self.started.set()
        return None

    def snapshot_create(self, body: dict) -> dict | None:
        raise ApiError(400, "there is no VM to snapshot yet")
