"""What the test guest prints and how its command line is spelled, for VMM tests.

The guest (sources in ``src/``) writes these lines to COM1; the helpers here
build its command line and recognise its lines, so tests assert against
one definition.  ``mem_checksum`` recomputes the ring-3 workload's checksum
(a pure function of the region size), so a ``mem-ok`` line can be checked
exactly.
"""

from __future__ import annotations

import re

MIB = 1 << 20
MEM_REGION_BASE = 16 * MIB        # src/main.c MEM_REGION_BASE: the workload fills [16 MiB, 16 MiB + mem)
MEM_REPORT_MS = 1000              # at most one mem-ok line per second after the first pass
PATTERN_MUL = 0x9E3779B97F4A7C15  # src/user.c: word at address a = (a * MUL) ^ XOR (mod 2^64)
PATTERN_XOR = 0x5A17C0DE0B5E55ED
_MASK64 = (1 << 64) - 1

READY_RE = re.compile(r"^VOLT-READY uptime_ms=(\d+) cpus=(\d+) mem_mib=(\d+)$")
CPU_UP_RE = re.compile(r"^cpu (\d+) up$")
TICK_RE = re.compile(r"^tick (\d+) clock_ms=(\d+)$")
MEM_OK_RE = re.compile(r"^mem-ok ([0-9a-f]{16})$")
MEM_CORRUPT_RE = re.compile(r"^mem-CORRUPT ([0-9a-f]{16})$")
MEM_ERROR_PREFIX = "mem-ERROR "     # volt.mem did not fit in RAM above 16 MiB: no workload
PANIC_RE = re.compile(r"^VOLT-PANIC vector=(\d+) rip=([0-9a-f]+) err=([0-9a-f]+)$")
POWEROFF = "VOLT-POWEROFF"
CTRL_ALT_DEL = "VOLT-CTRL-ALT-DEL"


def cmdline(
    ticks: int | None = None, tick_ms: int | None = None, mem_mib: int = 0, poweroff: bool = False
) -> str:
    """The guest's command line; ``ticks=None`` prints no ticks, ``ticks=0`` ticks forever."""
    words = []
    if ticks is not None:
        words.append(f"volt.ticks={ticks}")
    if tick_ms is not None:
        words.append(f"volt.tick_ms={tick_ms}")
    if mem_mib:
        words.append(f"volt.mem={mem_mib}")
    if poweroff:
        words.append("volt.poweroff")
    return " ".join(words)


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
