"""A tiny initramfs (cpio newc, gzip): busybox, the virtio modules, and an /init for a real Linux.

Two inits, both run by a real Debian kernel on hardware-KVM hosts:
- the acceptance init (`build_initramfs`) loads the virtio modules, mounts the first virtio
  disk (ext4, made by `make_ext4_disk`), reads a marker file from it, configures the NIC and
  pings the host over the tap, printing one line per step, then powers off through ACPI;
- the workload init (`build_workload_initramfs`) loads the modules, mounts the root disk named
  by `root=` (what a spec's `disks[].root` adds to the command line) and switches to it, or
  stays in the initramfs without one; then `volt-init` (the same script on the root disk, made
  by `make_root_disk`) writes a payload to the data disk, pings the host, prints READY_MARKER
  and a counter with the guest's uptime every 200 ms, re-reading the disk (page cache dropped)
  and pinging every 25 counts: what snapshot, restore and clone tests watch continue. It also says
  whether Linux's vmgenid driver bound to the DSDT's VGEN and prints the generation ID (read
  through /dev/mem) at READY and every 25 counts.
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

from .. import layout

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


READY_MARKER = "VOLT-LINUX-READY"
PAYLOAD_BLOCKS = 16                     # x 64 KiB of random data written once to the data disk
CHECK_EVERY = 25                        # counts between disk re-reads and pings
VMGENID_BLOCK = layout.VMGENID_ADDR // 16   # the generation ID, read through /dev/mem in 16-byte blocks

# Stage 1 of the workload: modules, then the root disk if the command line names one.
WORKLOAD_INIT = """#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
for m in $($B cat /lib/modules/order); do $B insmod /lib/modules/$m.ko || $B echo "insmod $m failed"; done
$B echo "modules-loaded $($B cat /lib/modules/order | $B wc -w)"
root=""; mode=ro
for w in $($B cat /proc/cmdline); do case "$w" in root=*) root=${w#root=};; rw) mode=rw;; esac; done
[ -n "$root" ] || exec /sbin/volt-init
n=0; while [ ! -b "$root" ] && [ $n -lt 100 ]; do $B sleep 0.1; n=$((n+1)); done
$B mkdir -p /newroot
$B mount -t ext4 -o $mode "$root" /newroot || { $B echo "root-FAIL mount $root"; exec /sbin/volt-init; }
$B echo "root-ok $root $mode"
for d in proc sys dev; do $B mount --move /$d /newroot/$d; done
exec $B switch_root /newroot /sbin/volt-init
"""

# Stage 2: the workload itself (in the initramfs and on the root disk alike).
WORKLOAD_MAIN = f"""#!/bin/busybox sh
B=/bin/busybox
root=""
for w in $($B cat /proc/cmdline); do case "$w" in root=*) root=${{w#root=}};; esac; done
data=""
for d in /dev/vda /dev/vdb /dev/vdc /dev/vdd; do
  if [ -b $d ] && [ "$d" != "$root" ]; then data=$d; break; fi
done
if [ -n "$data" ]; then
  $B mkdir -p /data
  if $B mount -t ext4 $data /data; then
    [ -f /data/payload ] || {{ $B dd if=/dev/urandom of=/data/payload bs=64k count={PAYLOAD_BLOCKS} 2>/dev/null; $B sync; }}
    $B echo "data-sum $($B sha256sum /data/payload | $B cut -c1-64)"
  else
    $B echo "data-FAIL mount $data"; data=""
  fi
fi
net=""
if $B ip link set eth0 up 2>/dev/null; then
  net=1; $B ip addr add {GUEST_IP}/24 dev eth0
  if $B ping -c 1 -W 5 {HOST_IP} >/dev/null; then $B echo "net-ok {HOST_IP}"; else $B echo "net-FAIL"; fi
fi
$B echo "vmgenid-driver $($B ls /sys/bus/acpi/drivers/vmgenid 2>/dev/null | $B grep VMGENCTR)"
vmgenid() {{ $B echo "vmgenid $($B dd if=/dev/mem bs=16 skip={VMGENID_BLOCK} count=1 2>/dev/null | $B od -An -tx1 | $B tr -d ' \\n')"; }}
vmgenid
$B echo "{READY_MARKER} cpus=$($B nproc)"
n=0
while :; do
  n=$((n+1))
  read up idle < /proc/uptime
  $B echo "counter $n uptime=$up"
  if [ $((n % {CHECK_EVERY})) -eq 0 ]; then
    vmgenid
    if [ -n "$data" ]; then
      $B echo 3 > /proc/sys/vm/drop_caches
      $B echo "disk-sum $($B sha256sum /data/payload | $B cut -c1-64)"
    fi
    if [ -n "$net" ]; then
      if $B ping -c 1 -W 2 {HOST_IP} >/dev/null; then $B echo "ping-ok"; else $B echo "ping-FAIL"; fi
    fi
  fi
  $B sleep 0.2
done
"""


def _entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    head = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    blob = head + name.encode() + b"\0"
    blob += b"\0" * (-len(blob) % 4)
    blob += data + b"\0" * (-len(data) % 4)
    return blob


def initramfs_entries(busybox: Path, init: str | bytes, modules: list[Path] = (),
                      extra: list[tuple[str, int, bytes]] = ()) -> list[tuple[str, int, bytes]]:
    """busybox as /bin/sh, `init` as /init, the modules and their load order in /lib/modules."""
    entries = [(d, 0o040755, b"") for d in ("bin", "sbin", "proc", "sys", "dev", "lib", "lib/modules")]
    entries += [("bin/busybox", 0o100755, busybox.read_bytes()), ("bin/sh", 0o120777, b"busybox"),
                ("init", 0o100755, init.encode() if isinstance(init, str) else init), *extra]
    entries += [(f"lib/modules/{m.name}", 0o100644, m.read_bytes()) for m in modules]
    entries.append(("lib/modules/order", 0o100644, " ".join(m.stem for m in modules).encode()))
    return entries


def build_initramfs(busybox: Path, out: Path, modules: list[Path] = ()) -> Path:
    """The acceptance initramfs: its /init proves the VM's devices, then powers off."""
    return write_cpio(initramfs_entries(busybox, INIT_SCRIPT, modules), out)


def build_workload_initramfs(busybox: Path, out: Path, modules: list[Path]) -> Path:
    """The workload initramfs: stage 1 as /init, stage 2 as /sbin/volt-init."""
    return write_cpio(initramfs_entries(busybox, WORKLOAD_INIT, modules,
                                        [("sbin/volt-init", 0o100755, WORKLOAD_MAIN.encode())]), out)


def make_root_disk(busybox: Path, path: Path, size_mib: int = 16) -> Path:
    """An ext4 root filesystem: busybox and the workload's stage 2 as /sbin/volt-init."""
    entries = [(d, 0o040755, b"") for d in ("bin", "sbin", "proc", "sys", "dev", "data", "tmp")]
    entries += [("bin/busybox", 0o100755, busybox.read_bytes()), ("bin/sh", 0o120777, b"busybox"),
                ("sbin/volt-init", 0o100755, WORKLOAD_MAIN.encode())]
    return make_ext4(path, entries, size_mib)


def make_data_disk(path: Path, size_mib: int = 16) -> Path:
    """An empty ext4 filesystem (the workload writes its payload there at first boot)."""
    return make_ext4(path, [], size_mib)


def make_ext4(path: Path, entries: list[tuple[str, int, bytes]], size_mib: int = 16) -> Path:
    """An ext4 image of `size_mib` holding (name, mode, data) entries, made with mkfs.ext4 -d
    (no mount needed); a symlink's data is its target, as in write_cpio."""
    import stat
    import tempfile
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as scratch:
        for name, mode, data in entries:
            where = Path(scratch, name)
            if stat.S_ISDIR(mode):
                where.mkdir(parents=True, exist_ok=True)
            elif stat.S_ISLNK(mode):
                where.symlink_to(data.decode())
            else:
                where.write_bytes(data)
                where.chmod(stat.S_IMODE(mode))
        with open(path, "wb") as f:
            f.truncate(size_mib << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", scratch, str(path)], check=True, capture_output=True)
    return path


def write_cpio(entries: list[tuple[str, int, bytes]], out: Path) -> Path:
    """A gzipped newc archive of (name, mode, data) entries; a symlink's data is its target."""
    archive = b"".join(_entry(n, m, d, i + 1) for i, (n, m, d) in enumerate(entries))
    archive += _entry("TRAILER!!!", 0, b"", 0)
    out.write_bytes(gzip.compress(archive, 6))
    return out


def make_ext4_disk(path: Path, size_mib: int = 16) -> Path:
    """An ext4 image holding /marker (the acceptance init reads it)."""
    return make_ext4(path, [("marker", 0o100644, (DISK_MARKER + "\n").encode())], size_mib)


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
