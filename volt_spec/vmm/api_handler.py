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


class VmmApi:
    """The handler object `ApiServer` routes requests to."""

    def __init__(self, machine: Machine, name: str, boot_protocol: str, booted_from: str = "cold") -> None:
        self.machine = machine
        self.name = name
        self.boot_protocol = boot_protocol
        self.booted_from = booted_from
        self.started_at = time.time()
        self.flavour = kvm_flavour()

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
            "counters": {
                "serial_bytes_out": getattr(m.out, "count", 0),
                "vcpu_exits": list(m.exit_counts),
                "unknown_pio": sum(m.pio.unknown.values()),
                "unknown_mmio": sum(m.mmio.unknown.values()),
            },
        }

    def set_state(self, state: str) -> None:
        try:
            if state == "Paused":
                self.machine.pause()
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
            self.machine.send_ctrl_alt_del()
            return
        raise ApiError(400, f"unknown action_type {action_type!r} (supported: SendCtrlAltDel)")

    def snapshot_create(self, body: dict) -> dict | None:
        raise ApiError(400, "snapshots are not supported by this volt-vmm yet")

    def snapshot_load(self, body: dict) -> dict | None:
        raise ApiError(400, "PUT /snapshot/load is only valid before boot, and this VM has booted")

    def route(self, method: str, path: str, body: dict | None) -> tuple[int, dict | None]:
        raise ApiError(404, f"no route for {method} {path}")
