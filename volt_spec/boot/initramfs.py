"""A tiny initramfs (cpio newc, gzip): busybox, the virtio modules, and an /init that proves the VM.

/init (run by a real Debian kernel on hardware-KVM hosts) loads the virtio modules, mounts
the first virtio disk (ext4, made by `make_ext4_disk`), reads a marker file from it,
configures the NIC and pings the host over the tap, printing one line per step, then
powers off through ACPI.
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

INIT_MARKER = "VOLT-LINUX-INIT"
DISK_MARKER = "volt-disk-marker-7f3a"
VIRTIO_MODULES = ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "failover", "net_failover", "virtio_net"]
GUEST_IP, HOST_IP = "10.0.2.15", "10.0.2.1"

INIT_SCRIPT = f"""#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
$B echo "{INIT_MARKER} $($B grep -c ^processor /proc/cpuinfo) cpus"
for m in $($B cat /lib/modules/order); do $B insmod /lib/modules/$m.ko || $B echo "insmod $m failed"; done
$B echo "modules-loaded $($B cat /lib/modules/order | $B wc -w)"
n=0; while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do $B sleep 0.1; n=$((n+1)); done
$B mkdir -p /mnt
if $B mount -t ext4 /dev/vda /mnt; then $B echo "disk-ok $($B cat /mnt/marker)"; else $B echo "disk-FAIL"; fi
$B ip link set eth0 up && $B ip addr add {GUEST_IP}/24 dev eth0
if $B ping -c 3 -W 2 {HOST_IP} >/dev/null; then $B echo "ping-ok {HOST_IP}"; else $B echo "ping-FAIL"; fi
$B umount /mnt
$B poweroff -f
"""


def _entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    head = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    blob = head + name.encode() + b"\0"
    blob += b"\0" * (-len(blob) % 4)
    blob += data + b"\0" * (-len(data) % 4)
    return blob


def build_initramfs(busybox: Path, out: Path, modules: list[Path] = ()) -> Path:
    entries = [("bin", 0o040755, b""), ("proc", 0o040755, b""), ("sys", 0o040755, b""),
               ("dev", 0o040755, b""), ("lib", 0o040755, b""), ("lib/modules", 0o040755, b""),
               ("bin/busybox", 0o100755, busybox.read_bytes()),
               ("bin/sh", 0o120777, b"busybox"),
               ("init", 0o100755, INIT_SCRIPT.encode())]
    entries += [(f"lib/modules/{m.name}", 0o100644, m.read_bytes()) for m in modules]
    entries.append(("lib/modules/order", 0o100644, " ".join(m.stem for m in modules).encode()))
    archive = b"".join(_entry(n, m, d, i + 1) for i, (n, m, d) in enumerate(entries))
    archive += _entry("TRAILER!!!", 0, b"", 0)
    out.write_bytes(gzip.compress(archive, 6))
    return out


def make_ext4_disk(path: Path, size_mib: int = 16) -> Path:
    """An ext4 image holding /marker, made with mkfs.ext4 -d (no mount needed)."""
    content = path.with_suffix(".d")
    content.mkdir(exist_ok=True)
    (content / "marker").write_text(DISK_MARKER + "\n")
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(path)], check=True, capture_output=True)
    return path


def cpio_names(archive: bytes) -> list[str]:
    """Member names of a newc archive (for tests)."""
    data, names, pos = gzip.decompress(archive), [], 0
    while pos < len(data):
        namesize, filesize = int(data[pos + 94:pos + 102], 16), int(data[pos + 54:pos + 62], 16)
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        pos += filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            break
        names.append(name)
    return names
