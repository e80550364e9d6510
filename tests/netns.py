"""A network namespace of our own with a tap device: the guest's peer, never a real network."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager

PEER = "10.0.2.1"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def tap_namespace(tap: str = "vt0", mac: str | None = None):
    """Yields (namespace, tap) with the tap up and PEER/24 on it, inside a fresh netns. Clones of
    one snapshot remember their peer's MAC: give each clone's tap the same `mac`."""
    ns = f"volt-test-{os.getpid()}-{tap}"
    _ip("netns", "add", ns)
    try:
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        _ip("netns", "exec", ns, "ip", "tuntap", "add", "dev", tap, "mode", "tap")
        if mac:
            _ip("netns", "exec", ns, "ip", "link", "set", "dev", tap, "address", mac)
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{PEER}/24", "dev", tap)
        _ip("netns", "exec", ns, "ip", "link", "set", tap, "up")
        yield ns, tap
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def in_netns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@contextmanager
def empty_namespace(label: str):
    """A fresh network namespace with only `lo` up: VMMs started in it create their own taps there."""
    ns = f"volt-test-{os.getpid()}-{label}"
    _ip("netns", "add", ns)
    try:
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def links(ns: str) -> set[str]:
    """The network devices in namespace `ns`."""
    out = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], check=True, capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()}
