"""Machine.hold: a pause asked from a device callback (the policy's console tap) that does not
wait, so a snapshot taken next holds the guest exactly at that console line. In-process, on
the real /dev/kvm."""

from __future__ import annotations

import re
import threading

import pytest

from .kvm_required import require_kvm
from .timing import scaled

pytestmark = pytest.mark.hwlane


class Console:
    """A console tap that collects the guest's lines and lets a test wait for one."""

    def __init__(self) -> None:
        self.text, self.cond = b"", threading.Condition()

    def __call__(self, data: bytes) -> None:
        with self.cond:
            self.text += data
            self.cond.notify_all()

    def wait_for(self, pattern: bytes, start: int = 0, timeout: float = 30.0) -> int:
        """The end offset of the first match of `pattern` after offset `start`."""
        with self.cond:
            assert self.cond.wait_for(lambda: re.search(pattern, self.text[start:]), scaled(timeout)), \
                self.text[-500:]
            return start + re.search(pattern, self.text[start:]).end()


@pytest.fixture
def machine():
    require_kvm()
    from volt_spec.guest.build import build_guest
    from volt_spec.kvm.system import Kvm
    from volt_spec.vmm.builder import build, launch
    from volt_spec.vmm.config import BootSourceConfig, VmmConfig
    from volt_spec.vmm.machine import install_kick_handler
    install_kick_handler()
    kvm = Kvm()
    m = build(kvm, VmmConfig(boot_source=BootSourceConfig(str(build_guest()), cmdline="volt.ticks=0 volt.tick_ms=20")))
    launch(m)
    yield m
    m.request_exit(0, "test over")
    for t in m.threads:
        t.join()
    m.close()


def test_a_hold_parks_the_guest_at_once_and_release_resumes_it(machine):
    console = Console()
    seen = {}

    def tap(data: bytes) -> None:          # on the vCPU thread, device lock held, like the policy's
        console(data)
        if b"tick 2 " in console.text and "token" not in seen:
            seen["token"] = machine.hold()
            seen["at"] = len(console.text)

    machine.devices.add_console_tap(tap)
    console.wait_for(rb"tick 2 ")
    machine.pause()                          # waits until every vCPU is parked: nothing runs now
    assert seen["token"] is not None and machine.state == "Paused"
    assert len(console.text) == seen["at"]   # not one more byte after the line that asked for it
    machine.release(seen["token"])
    assert machine.state == "Running"
    console.wait_for(rb"tick 3 ")


def test_a_user_pause_outlives_a_hold(machine):
    console = Console()
    machine.devices.add_console_tap(console)
    console.wait_for(rb"tick 1 ")
    token = machine.hold()
    assert token is not None and machine.hold() is None      # one pause at a time
    machine.pause(keep=True)                                   # the user pauses while it is held
    machine.release(token)
    assert machine.state == "Paused"                           # so the release does not resume it
    at = len(console.text)
    machine.resume()
    console.wait_for(rb"tick \d+ ", start=at)
