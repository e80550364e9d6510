"""Host side of virtio-net: a Linux tap device, a socketpair stand-in, and stable MACs.

`Tap` opens /dev/net/tun with TUNSETIFF (IFF_TAP | IFF_NO_PI: whole Ethernet frames,
no packet-info prefix, no vnet header) and keeps the fd nonblocking so the VMM can
poll it. `FakeTap` gives tests the same `read()` / `write()` / `fileno()` over a
SOCK_SEQPACKET socketpair, which keeps frame boundaries like a tap does.
"""

from __future__ import annotations

import os

TUN_PATH = "/dev/net/tun"
# <linux/if_tun.h>: TUNSETIFF = _IOW('T', 202, int).
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
IFREQ_SIZE = 40                   # struct ifreq on x86-64: name[16] + 24-byte union
FRAME_READ_MAX = 65536            # one read returns one frame; none is larger


def ifreq(name: str, flags: int) -> bytes:
    """struct ifreq for TUNSETIFF: NUL-padded name, le16 flags, the rest zero."""
    raw = name.encode("ascii")
    if not raw or len(raw) >= IFNAMSIZ:
        raise ValueError(f"tap name {name!r} must be 1..{IFNAMSIZ - 1} ASCII bytes")
    return raw.ljust(IFNAMSIZ, b"\0") + flags.to_bytes(2, "little") + bytes(IFREQ_SIZE - IFNAMSIZ - 2)


def mac_for(name: str) -> bytes:
    """A stable MAC for VM `name`: locally administered unicast (0x02) + 5 sha256 bytes."""
    import hashlib
    return b"\x02" + hashlib.sha256(name.encode()).digest()[:5]


TAP_FDS_ENV = "VOLT_TAP_FDS"        # "name=fd,...": taps the jail opened for this VMM


_handed: dict[str, int] = {}


def register(name: str, fd: int) -> None:
    """Tap `name` is `fd`, handed over by volt to a warm VMM (which may not open taps itself)."""
    _handed[name] = fd


def inherited_fd(name: str) -> int | None:
    """The fd of tap `name` that the jail (or volt, to a warm VMM) handed over, if any
    (close-on-exec from here on)."""
    if name in _handed:
        return _handed.pop(name)
    for item in os.environ.get(TAP_FDS_ENV, "").split(","):
        tap, _, fd = item.partition("=")
        if tap == name and fd.isdigit():
            os.set_inheritable(int(fd), False)
            return int(fd)
    return None


class Tap:
    """A tap interface opened (or created, with CAP_NET_ADMIN) under `name`."""

    def __init__(self, name: str) -> None:
        import fcntl
        inherited = inherited_fd(name)
        if inherited is not None:          # opened by the jail before it dropped root
            self._fd, self.name = inherited, name
            return
        request = ifreq(name, IFF_TAP | IFF_NO_PI)
        self._fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            # SAFETY: TUNSETIFF reads and writes back one struct ifreq; fcntl copies the
            # 40-byte buffer in and returns the kernel's copy, no pointers are shared.
            reply = fcntl.ioctl(self._fd, TUNSETIFF, request)
        except OSError:
            os.close(self._fd)
            raise
        self.name = reply[:IFNAMSIZ].rstrip(b"\0").decode("ascii")

    def fileno(self) -> int:
        return self._fd

    def read(self) -> bytes | None:
        """One frame, or None when nothing is waiting."""
        try:
            return os.read(self._fd, FRAME_READ_MAX)
        except BlockingIOError:
            return None

    def write(self, frame: bytes) -> bool:
        """Send one frame; False when the tap's queue is full (the frame is dropped)."""
        try:
            os.write(self._fd, frame)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FakeTap:
    """A tap stand-in for tests: the device uses this object, the test uses `peer`."""

    def __init__(self) -> None:
        import socket
        self._sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.setblocking(False)
        self.peer.setblocking(False)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> bytes | None:
        try:
            return self._sock.recv(FRAME_READ_MAX)
        except BlockingIOError:
            return None

    def write(self, frame: bytes) -> bool:
        try:
            self._sock.send(frame)
        except BlockingIOError:
            return False
        return True

    # -- test side ---------------------------------------------------------------

    def inject(self, frame: bytes) -> None:
        """A frame arriving from the network, for the guest."""
        self.peer.send(frame)

    def sent(self) -> list[bytes]:
        """Every frame the guest has transmitted since the last call."""
        frames = []
        while True:
            try:
                frames.append(self.peer.recv(FRAME_READ_MAX))
            except BlockingIOError:
                return frames

    def close(self) -> None:
        self._sock.close()
        self.peer.close()
