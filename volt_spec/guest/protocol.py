"""What the test guest prints and how its command line is spelled, for VMM tests.

The guest (sources in ``src/``) writes these lines to COM1; the helpers here
build its command line and recognise its lines, so tests assert against
one definition.  ``mem_checksum`` recomputes the ring-3 workload's checksum
(a pure function of the region size), so a ``mem-ok`` line can be checked
exactly; ``blk_image``/``blk_checksum`` do the same for the virtio-blk task
(src/blk.c), so a host test can check both the line and the disk file.
"""

from __future__ import annotations

import re
import struct

MIB = 1 << 20
MEM_REGION_BASE = 16 * MIB        # src/main.c MEM_REGION_BASE: the workload fills [16 MiB, 16 MiB + mem)
MEM_REPORT_MS = 1000              # at most one mem-ok line per second after the first pass
PATTERN_MUL = 0x9E3779B97F4A7C15  # src/user.c: word at address a = (a * MUL) ^ XOR (mod 2^64)
PATTERN_XOR = 0x5A17C0DE0B5E55ED
DIRTY_GEN_MUL = 0xD1B54A32D192ED03  # src/user.c: dirty word = pattern(a) ^ (gen * MUL) (mod 2^64)
_MASK64 = (1 << 64) - 1

SECTOR_SIZE = 512                 # src/blk.c: virtio-blk sectors
BLK_DEFAULT_SECTORS = 128         # volt.blk_sectors default (64 KiB)
NET_DEFAULT_COUNT = 8             # volt.net_count default
NET_DEFAULT_IP = "10.0.2.15"      # volt.ip default
NET_DEFAULT_PEER = "10.0.2.1"     # volt.peer default
IO_REPORT_MS = 100                # volt.io=loop: at most one blk-round / net-round line per this
_WORDS_PER_SECTOR = SECTOR_SIZE // 8
_SECTOR_STRUCT = struct.Struct(f"<{_WORDS_PER_SECTOR}Q")

READY_RE = re.compile(r"^VOLT-READY uptime_ms=(\d+) cpus=(\d+) mem_mib=(\d+)$")
CPU_UP_RE = re.compile(r"^cpu (\d+) up cpuid_apic=(\d+)$")
USER_CPUID_RE = re.compile(r"^user-cpuid apic=(\d+)$")
TICK_RE = re.compile(r"^tick (\d+) clock_ms=(\d+) tsc_ms=(\d+)$")
MEM_OK_RE = re.compile(r"^mem-ok ([0-9a-f]{16})$")
MEM_CORRUPT_RE = re.compile(r"^mem-CORRUPT ([0-9a-f]{16})$")
MEM_ERROR_PREFIX = "mem-ERROR "     # volt.mem did not fit in RAM above 16 MiB: no workload
# volt.dirty=<MiB>: the region after volt.mem's, rewritten once per volt.tick_ms (src/user.c): each
# pass checks the previous generation's words and writes the next's.
DIRTY_OK_RE = re.compile(r"^dirty-ok gen=(\d+)$")
DIRTY_CORRUPT_RE = re.compile(r"^dirty-CORRUPT ([0-9a-f]{16}) gen=(\d+)$")
DIRTY_ERROR_PREFIX = "dirty-ERROR "
PANIC_RE = re.compile(r"^VOLT-PANIC vector=(\d+) rip=([0-9a-f]+) err=([0-9a-f]+)$")
BLK_OK_RE = re.compile(r"^blk-ok (\d+) ([0-9a-f]{16})$")
BLK_RO_OK = "blk-ro-ok"
BLK_READ_RE = re.compile(r"^blk-read ([0-9a-f]{16})$")
BLK_ROUND_RE = re.compile(r"^blk-round (\d+) ok ([0-9a-f]{16})$")
BLK_FAIL_PREFIX = "blk-FAIL "
NET_OK_RE = re.compile(r"^net-ok (\d+) (\d+)$")
NET_ROUND_RE = re.compile(r"^net-round (\d+) (\d+) (\d+)$")
NET_FAIL_PREFIX = "net-FAIL "
# Benchmark modes (src/blkbench.c, src/net.c): one line per phase, times in guest ns.
BLK_BENCH_START_RE = re.compile(r"^blk-bench start sectors=(\d+) chunk=(\d+) qd=(\d+)$")
BLK_BENCH_BYTES_RE = re.compile(r"^blk-bench (seqwrite|seqread) bytes=(\d+) ns=(\d+)$")
BLK_BENCH_OPS_RE = re.compile(r"^blk-bench (randread4k|randwrite4k) ops=(\d+) ns=(\d+)$")
BLK_BENCH_DONE = "blk-bench done"
NET_BENCH_RE = re.compile(r"^net-bench pps sent=(\d+) received=(\d+) ns=(\d+)$")
POWEROFF = "VOLT-POWEROFF"
CTRL_ALT_DEL = "VOLT-CTRL-ALT-DEL"


def cmdline(
    ticks: int | None = None,
    tick_ms: int | None = None,
    mem_mib: int = 0,
    poweroff: bool = False,
    dirty_mib: int = 0,
    *,
    blk: str | None = None,
    blk_sectors: int | None = None,
    net: bool = False,
    net_count: int | None = None,
    ip: str | None = None,
    peer: str | None = None,
    io_loop: bool = False,
) -> str:
    """The guest's command line; ``ticks=None`` prints no ticks, ``ticks=0`` ticks forever.

    ``blk`` is ``"rw"`` or ``"ro"``; ``net`` asks for the echo task; ``io_loop``
    repeats both forever.  With ``poweroff`` and no finite tick count, a guest
    with I/O tasks powers off once they finish (never, with ``io_loop``).
    """
    words = []
    if ticks is not None:
        words.append(f"volt.ticks={ticks}")
    if tick_ms is not None:
        words.append(f"volt.tick_ms={tick_ms}")
    if mem_mib:
        words.append(f"volt.mem={mem_mib}")
    if dirty_mib:
        words.append(f"volt.dirty={dirty_mib}")
    if poweroff:
        words.append("volt.poweroff")
    if blk is not None:
        if blk not in ("rw", "ro"):
            raise ValueError(f"blk must be 'rw' or 'ro', not {blk!r}")
        words.append(f"volt.blk={blk}")
    if blk_sectors is not None:
        words.append(f"volt.blk_sectors={blk_sectors}")
    if net:
        words.append("volt.net=echo")
    if net_count is not None:
        words.append(f"volt.net_count={net_count}")
    if ip is not None:
        words.append(f"volt.ip={ip}")
    if peer is not None:
        words.append(f"volt.peer={peer}")
    if io_loop:
        words.append("volt.io=loop")
    return " ".join(words)


def dirty_word(addr: int, gen: int) -> int:
    """The word src/user.c's dirty pass `gen` leaves at guest address `addr` (0 before pass 1)."""
    return (((addr * PATTERN_MUL) & _MASK64) ^ PATTERN_XOR) ^ ((gen * DIRTY_GEN_MUL) & _MASK64) if gen else 0


def mem_checksum(mem_mib: int) -> str:
    """The checksum a healthy ``volt.mem=<mem_mib>`` guest prints, as 16 hex digits.

    Pure Python: about a second for 8 MiB.
    """
    total = 0
    mul, xor, mask = PATTERN_MUL, PATTERN_XOR, _MASK64
    for addr in range(MEM_REGION_BASE, MEM_REGION_BASE + mem_mib * MIB, 8):
        word = ((addr * mul) & mask) ^ xor
        total = (((total << 7) | (total >> 57)) & mask) ^ word
    return f"{total:016x}"


def _fold(total: int, words: tuple[int, ...] | list[int]) -> int:
    """src/blk.c fold(): sum = (rotl(sum, 7) ^ w) * MUL, so sector order matters."""
    mask, mul = _MASK64, PATTERN_MUL
    for word in words:
        total = (((((total << 7) | (total >> 57)) & mask) ^ word) * mul) & mask
    return total


def blk_sector(sector: int, round_: int = 0) -> bytes:
    """The 512 bytes src/blk.c writes to ``sector`` in round ``round_`` (0 for ``volt.blk=rw``).

    Word 0 is ``round << 32 | sector``; word i > 0 is
    ``((round << 38 | sector << 6 | i) * MUL) ^ XOR`` (mod 2^64), little-endian.
    """
    mul, xor, mask = PATTERN_MUL, PATTERN_XOR, _MASK64
    base = ((round_ << 38) | (sector << 6)) & mask
    words = [((round_ << 32) | (sector & 0xFFFFFFFF)) & mask]
    words += [(((base | i) * mul) & mask) ^ xor for i in range(1, _WORDS_PER_SECTOR)]
    return _SECTOR_STRUCT.pack(*words)


def blk_image(sectors: int = BLK_DEFAULT_SECTORS, round_: int = 0) -> bytes:
    """The first ``sectors`` sectors of a disk after a completed round ``round_``."""
    return b"".join(blk_sector(s, round_) for s in range(sectors))


def blk_checksum_of(data: bytes) -> str:
    """The checksum the guest prints for these disk bytes (whole sectors), as 16 hex digits.

    ``blk-read`` prints it for whatever the first N sectors hold.
    """
    if len(data) % SECTOR_SIZE:
        raise ValueError(f"{len(data)} bytes is not a whole number of {SECTOR_SIZE}-byte sectors")
    total = 0
    for off in range(0, len(data), SECTOR_SIZE):
        total = _fold(total, _SECTOR_STRUCT.unpack_from(data, off))
    return f"{total:016x}"


def blk_checksum(sectors: int = BLK_DEFAULT_SECTORS, round_: int = 0) -> str:
    """The checksum in ``blk-ok`` (round 0) or ``blk-round <round_> ok`` lines."""
    return blk_checksum_of(blk_image(sectors, round_))


def blk_sector_round(data: bytes, sector: int) -> int | None:
    """Which round's pattern ``data`` (one sector read from ``sector``) holds, or None if none."""
    if len(data) != SECTOR_SIZE:
        raise ValueError(f"a sector is {SECTOR_SIZE} bytes, got {len(data)}")
    word0 = _SECTOR_STRUCT.unpack_from(data)[0]
    round_ = word0 >> 32
    if word0 & 0xFFFFFFFF != sector & 0xFFFFFFFF or blk_sector(sector, round_) != data:
        return None
    return round_


def bench_cmdline(
    *,
    blk: bool = False,
    net: bool = False,
    poweroff: bool = True,
    blk_sectors: int | None = None,
    blk_chunk: int | None = None,
    blk_qd: int | None = None,
    blk_ops: int | None = None,
    blk_ms: int | None = None,
    net_count: int | None = None,
    net_window: int | None = None,
    net_ms: int | None = None,
) -> str:
    """The command line of the benchmark modes: ``volt.blk=bench`` and/or ``volt.net=flood``.

    Unset options keep the guest's defaults (src/blkbench.c, src/net.c).
    """
    words = ["volt.blk=bench"] if blk else []
    if net:
        words.append("volt.net=flood")
    if poweroff:
        words.append("volt.poweroff")
    options = {"blk_sectors": blk_sectors, "blk_chunk": blk_chunk, "blk_qd": blk_qd, "blk_ops": blk_ops,
               "blk_ms": blk_ms, "net_count": net_count, "net_window": net_window, "net_ms": net_ms}
    words += [f"volt.{key}={value}" for key, value in options.items() if value is not None]
    return " ".join(words)
