"""Guest RAM from a compressed snapshot: decompressed on demand, or ahead when that cannot be.

On demand (the default where a userfaultfd can be had): the RAM is anonymous memory registered
for missing-page faults, and a forked child (the memory server) fills it from memory.snap.zst, a
2 MiB frame at a time: first the frames the guest or the VMM touch (their faults wait for it),
then the rest in order, in the background. The guest runs after decompressing the few frames it
touches first, not all of them; the price is anonymous memory (clones of one snapshot do not
share its pages in the page cache, as MAP_PRIVATE file mappings do). When every frame holding
data is in, the VMM unregisters the RAM (what was never filled is zeros), then the server exits.

Ahead (no userfaultfd on this host or for this process): every frame holding data is
decompressed into a memfd first, and the RAM is mapped MAP_PRIVATE from it as from memory.snap.

The measurements behind the choice are benchmarks/snapshots.py's (both, in one run).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import threading

from ..kvm.memory import GuestMemory, MemoryRegion, MAP_NORESERVE
from ..kvm.userfault import Userfault
from .compressed import FRAME, CompressedError, Frames

PAGE = 4096
PR_SET_PDEATHSIG = 1
MODE_ENV = "VOLT_COMPRESSED_RESTORE"      # "ahead": never on demand (benchmarks compare the two)
DONE = b"\0filled\n"                       # the server's word that every frame holding data is in


def load(fd: int, layout: dict, where: str) -> tuple[GuestMemory, str]:
    """Guest RAM for the compressed memory file open as `fd` (its seek table checked first);
    returns it and how it is filled: "on-demand" or "ahead (<why>)". The fd is the memory's."""
    frames = Frames(fd, int(layout["size"]), where)
    spans = [(int(r["gpa"]), int(r["size"]), int(r["offset"])) for r in layout["regions"]]
    uffd, why = (None, f"{MODE_ENV}=ahead") if os.environ.get(MODE_ENV) == "ahead" else Userfault.open()
    if uffd is None:
        return _ahead(frames, spans), f"ahead ({why})"
    memory = GuestMemory.anonymous([(gpa, size) for gpa, size, _ in spans])
    try:
        for r in memory.regions:
            uffd.register_missing(r.host_addr, r.size)
        memory.filling = MemoryServer(uffd, frames, [(r.host_addr, r.size, off) for r, (_, _, off)
                                                     in zip(memory.regions, spans)])
    except BaseException:
        uffd.close()
        memory.close()
        raise
    memory.extra_fds.append(fd)
    return memory, "on-demand"


def _ahead(frames: Frames, spans: list[tuple[int, int, int]]) -> GuestMemory:
    """Every frame holding data written into a memfd, the regions mapped MAP_PRIVATE from it."""
    mfd = os.memfd_create("volt-guest-memory", os.MFD_CLOEXEC)
    try:
        os.ftruncate(mfd, frames.size)
        for i in range(len(frames)):
            if not frames.is_zero(i):
                data = frames.frame(i)
                if data.count(0) != len(data):
                    os.pwrite(mfd, data, i * FRAME)
        regions = []
        for gpa, size, offset in spans:
            m = mmap.mmap(mfd, size, flags=mmap.MAP_PRIVATE | MAP_NORESERVE,
                          prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
            regions.append(MemoryRegion(gpa, size, m, (mfd, offset)))
        memory = GuestMemory(regions)
    except BaseException:
        os.close(mfd)
        raise
    memory.extra_fds.append(frames.fd)
    return memory


class MemoryServer:
    """The forked child that fills guest RAM through the userfaultfd, and the VMM's watch on it.

    `wait()` returns once every frame holding data is in (a snapshot of the VM waits for that:
    pages never filled are not in its page tables). The server then stays, serving faults on
    the rest (zeros), until the VMM has unregistered the RAM: a VMM thread that faults on a page
    while holding the GIL must always find someone to serve it. If the server fails (a frame that
    does not decompress: the checks before the guest ran read the fingerprint, not every frame),
    the guest cannot go on: once `arm()`ed (the checks passed), `on_failure(reason)` runs, by
    default ending the VMM with the reason; before, the failure waits for the checks to say it."""

    def __init__(self, uffd: Userfault, frames: Frames, spans: list[tuple[int, int, int]],
                 on_failure=None) -> None:
        self.uffd, self.spans, self.error, self.armed, self.closed = uffd, spans, None, False, False
        self.on_failure = on_failure or _end_vmm
        self.done = threading.Event()
        rfd, wfd = os.pipe2(os.O_CLOEXEC)               # server -> VMM: DONE, or why it failed
        stop_r, stop_w = os.pipe2(os.O_CLOEXEC)         # VMM -> server: the RAM is unregistered
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:                                              # the server
            os.close(rfd)
            os.close(stop_w)
            _serve_and_exit(uffd, frames, spans, wfd, stop_r, parent)
        os.close(wfd)
        os.close(stop_r)
        self.pid, self.rfd, self.stop_w = pid, rfd, stop_w
        threading.Thread(target=self._watch, name="memory-server", daemon=True).start()

    def _watch(self) -> None:
        message = b""
        while not message.endswith(DONE):
            chunk = os.read(self.rfd, 4096)
            if not chunk:
                break
            message += chunk
        self._finish(message)

    def _finish(self, message: bytes) -> None:
        """The server said DONE (unregister the RAM, then let it go) or failed (`message` says why)."""
        if message == DONE:
            for host_addr, size, _ in self.spans:                # missing pages now fault in as zeros
                self.uffd.unregister(host_addr, size)
            self.uffd.close()
        os.close(self.stop_w)                                     # the server leaves
        _, status = os.waitpid(self.pid, 0)
        os.close(self.rfd)
        if message != DONE:
            self.error = message.decode(errors="replace") or f"the memory server ended with status {status}"
        self.done.set()
        if self.error and self.armed and not self.closed:         # not close()d: a real failure
            self.on_failure(self.error)

    def arm(self) -> None:
        """The snapshot's checks passed: from now on a failure ends the VMM (CompressedError now
        if the server already failed)."""
        self.armed = True
        if self.done.is_set() and self.error:
            raise CompressedError(self.error)

    def wait(self) -> None:
        """Until all of the snapshot's memory is in; CompressedError if it never will be."""
        self.done.wait()
        if self.error:
            raise CompressedError(f"restoring the compressed memory failed: {self.error}")

    def close(self) -> None:
        """Stop the server (the VM is being torn down, perhaps before it finished)."""
        self.closed = True
        if not self.done.is_set():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _end_vmm(reason: str) -> None:
    os.write(2, f"volt-vmm: guest memory cannot be restored: {reason}; stopping the VM\n".encode())
    os._exit(1)


def _serve_and_exit(uffd: Userfault, frames: Frames, spans, wfd: int, stop_fd: int, parent: int) -> None:
    """The server's whole life: faults first, then the next frame in order; DONE on the pipe when
    every frame holding data is in, then faults only, until the VMM says it unregistered the RAM
    (exit 0); the reason on the pipe and exit 1 when a frame cannot be filled."""
    code, filled = 0, False
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(0)
        server = _Server(uffd, frames, spans)
        server.run()
        os.write(wfd, DONE)
        filled = True
        server.linger(stop_fd)
    except BaseException as e:  # noqa: BLE001 - reported to the VMM
        if not filled:
            os.write(wfd, f"{e}".encode()[:4000] or type(e).__name__.encode())
            code = 1
    os._exit(code)


class _Server:
    def __init__(self, uffd: Userfault, frames: Frames, spans) -> None:
        self.uffd, self.frames, self.spans = uffd, frames, spans
        self.done = bytearray(len(frames))

    def run(self) -> None:
        import select
        order = range(len(self.frames))
        poll = select.poll()
        poll.register(self.uffd.fd, select.POLLIN)
        for nxt in order:
            if poll.poll(0):
                self.serve_faults()
            if not self.done[nxt] and not self.frames.is_zero(nxt):
                self.fill(nxt)

    def linger(self, stop_fd: int) -> None:
        """Serve faults (on frames of zeros) until `stop_fd` is closed: the RAM is unregistered."""
        import select
        poll = select.poll()
        poll.register(self.uffd.fd, select.POLLIN)
        poll.register(stop_fd, select.POLLIN | select.POLLHUP)
        while True:
            ready = dict(poll.poll())
            if stop_fd in ready:
                return
            try:
                self.serve_faults()
            except OSError:
                pass                     # unregistered under it: the fault was woken as a normal one

    def serve_faults(self) -> None:
        while addresses := self.uffd.faults():
            for addr in addresses:
                frame = self.frame_of(addr)
                if frame is None:
                    continue
                if self.done[frame]:                    # filled since it faulted: the copy woke it
                    self.uffd.wake(addr & ~(PAGE - 1), PAGE)
                else:
                    self.fill(frame)

    def frame_of(self, addr: int) -> int | None:
        for host_addr, size, offset in self.spans:
            if host_addr <= addr < host_addr + size:
                return (offset + addr - host_addr) // FRAME
        return None

    def fill(self, i: int) -> None:
        """Frame i copied (or its zeros mapped) into every region it covers."""
        zero = self.frames.is_zero(i)
        data = None if zero else self.frames.frame(i)
        src = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value if data is not None else 0
        start, end = i * FRAME, i * FRAME + (FRAME if data is None else len(data))
        for host_addr, size, offset in self.spans:
            lo, hi = max(start, offset), min(end, offset + size)
            if lo < hi:
                dst = host_addr + lo - offset
                if zero:
                    self._pages(lambda d, s, n: self.uffd.zeropage(d, n), dst, 0, hi - lo)
                else:
                    self._pages(self.uffd.copy, dst, src + lo - start, hi - lo)
        self.done[i] = 1

    @staticmethod
    def _pages(fill, dst: int, src: int, length: int) -> None:
        """fill the range at once; if some page of it is there already (EEXIST), page by page."""
        import errno
        try:
            fill(dst, src, length)
            return
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
        for off in range(0, length, PAGE):
            try:
                fill(dst + off, src + off, PAGE)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
