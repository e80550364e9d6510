"""The closed set of vCPU exits `Vcpu.run()` returns, one small class each.

Plain `__slots__` classes rather than dataclasses: this module is imported
before the first KVM_RUN, and `dataclasses` pulls in `inspect` (~12 ms).
"""

from __future__ import annotations

# enum kvm_exit_reason values from <linux/kvm.h>
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

INTERNAL_ERROR_NAMES = {1: "emulation failure", 2: "simultaneous exception", 3: "delivery event",
                        4: "unexpected exit reason"}


class Exit:
    __slots__ = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(
            getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


class IoOut(Exit):
    """The guest wrote `data` to I/O port `port`."""
    __slots__ = ("port", "data")

    def __init__(self, port: int, data: bytes) -> None:
        self.port, self.data = port, data


class IoIn(Exit):
    """The guest reads `size` bytes from `port`; answer with `Vcpu.complete_io_in`."""
    __slots__ = ("port", "size")

    def __init__(self, port: int, size: int) -> None:
        self.port, self.size = port, size


class MmioWrite(Exit):
    __slots__ = ("addr", "data")

    def __init__(self, addr: int, data: bytes) -> None:
        self.addr, self.data = addr, data


class MmioRead(Exit):
    """Answer with `Vcpu.complete_mmio_read` before the next run."""
    __slots__ = ("addr", "size")

    def __init__(self, addr: int, size: int) -> None:
        self.addr, self.size = addr, size


class Hlt(Exit):
    __slots__ = ()


class Shutdown(Exit):
    """Triple fault (or a shutdown the CPU could not handle)."""
    __slots__ = ()


class Interrupted(Exit):
    """KVM_RUN returned EINTR/EAGAIN (a kick) or immediate_exit was set."""
    __slots__ = ()


class FailEntry(Exit):
    __slots__ = ("reason", "cpu")

    def __init__(self, reason: int, cpu: int) -> None:
        self.reason, self.cpu = reason, cpu


class InternalError(Exit):
    __slots__ = ("suberror", "data")

    def __init__(self, suberror: int, data: tuple[int, ...]) -> None:
        self.suberror, self.data = suberror, data

    def describe(self) -> str:
        return INTERNAL_ERROR_NAMES.get(self.suberror, f"suberror {self.suberror}")


class SystemEvent(Exit):
    __slots__ = ("type", "data")

    def __init__(self, type: int, data: tuple[int, ...]) -> None:
        self.type, self.data = type, data


class Debug(Exit):
    __slots__ = ("exception", "pc")

    def __init__(self, exception: int, pc: int) -> None:
        self.exception, self.pc = exception, pc


class Unknown(Exit):
    """An exit reason this VMM does not handle: always an error upstream."""
    __slots__ = ("reason",)

    def __init__(self, reason: int) -> None:
        self.reason = reason
