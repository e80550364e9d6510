"""Threads and a one-shot flag on `_thread` alone.

`threading` costs ~4.6 ms of imports (functools, collections) before the first
KVM_RUN; the VMM needs only start-a-thread, a settable flag and a join.
"""

from __future__ import annotations

import _thread


class Flag:
    """A one-shot event: set() once, wait(timeout) from any thread."""

    __slots__ = ("_gate", "_guard", "_set")

    def __init__(self) -> None:
        self._gate = _thread.allocate_lock()
        self._gate.acquire()
        self._guard = _thread.allocate_lock()
        self._set = False

    def set(self) -> None:
        with self._guard:
            if not self._set:
                self._set = True
                self._gate.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float = -1) -> bool:
        if self._set:
            return True
        if self._gate.acquire(True, timeout):
            self._gate.release()
        return self._set


class Worker:
    """A started thread running fn(*args); join() waits and re-raises what it raised."""

    __slots__ = ("ident", "done", "error")

    def __init__(self, fn, *args) -> None:
        self.done = Flag()
        self.error: BaseException | None = None
        self.ident = _thread.start_new_thread(self._main, (fn, args))

    def _main(self, fn, args) -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to join()
            self.error = e
        finally:
            self.done.set()

    def is_alive(self) -> bool:
        return not self.done.is_set()

    def join(self) -> None:
        self.done.wait()
        if self.error is not None:
            raise self.error
