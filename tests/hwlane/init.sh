#!/bin/busybox sh
# /init of the hardware-KVM lane's L1: a Debian kernel under QEMU TCG with SVM. Loads the modules
# (9p, overlayfs, kvm-amd, tun, ...), makes the host's / (shared read-only by virtio-9p) writable
# with a tmpfs overlay, mounts the results share at its host path and runs the job in a chroot.
# Every failure prints one LANE-FAIL line (the host reports it) and powers off.
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
say() { $B echo "LANE: $*"; }
fail() { $B echo "LANE-FAIL: $*"; $B sync; $B poweroff -f; }
arg() { for w in $($B cat /proc/cmdline); do case "$w" in "$1="*) $B echo "${w#*=}";; esac; done; }
RESULTS=$(arg lane.results)
[ -n "$RESULTS" ] || fail "no lane.results= on the kernel command line"
for m in $($B cat /lib/modules/order); do
  P=$(arg "lane.$m" | $B tr , ' ')     # lane.kvm-amd=vgif=0,avic=0: that module's parameters
  $B insmod /lib/modules/$m.ko $P || fail "module load failed: insmod $m $P"
done
[ -c /dev/kvm ] || fail "no /dev/kvm after loading kvm-amd ($($B dmesg | $B grep -i -m1 -e svm -e kvm))"
say "modules loaded; kvm_amd nested=$($B cat /sys/module/kvm_amd/parameters/nested) npt=$($B cat /sys/module/kvm_amd/parameters/npt) vgif=$($B cat /sys/module/kvm_amd/parameters/vgif)"
$B mkdir -p /host /rw /newroot
OPTS=trans=virtio,version=9p2000.L,msize=512000
$B mount -t 9p -o $OPTS,ro,cache=loose hostroot /host || fail "mount of the host's / (9p hostroot) failed"
$B mount -t tmpfs -o mode=0755 tmpfs /rw
$B mkdir -p /rw/upper /rw/work
$B mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot \
  || fail "overlay over the host's / failed"
$B mount -t proc proc /newroot/proc
$B mount -t sysfs sysfs /newroot/sys
$B mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup 2>/dev/null
$B mount -t devtmpfs devtmpfs /newroot/dev
$B mkdir -p /newroot/dev/pts /newroot/dev/shm
$B mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
$B mount -t tmpfs tmpfs /newroot/dev/shm
$B mount -t tmpfs -o mode=0755 tmpfs /newroot/run
$B mount -t 9p -o $OPTS results /newroot$RESULTS || fail "mount of the results share failed"
$B ip link set lo up
CS=/sys/devices/system/clocksource/clocksource0
say "clocksource $($B cat $CS/current_clocksource) (of $($B cat $CS/available_clocksource)); $($B dmesg | $B grep -i -m2 -e 'tsc.*unstable' -e 'tsc: Refined')"
say "ready: $($B nproc) cpus, $($B free -m | $B awk '/Mem:/ {print $2}') MiB"
$B chroot /newroot /bin/sh "$RESULTS/job.sh"
say "job exited $?"
$B sync
$B umount /newroot$RESULTS
$B poweroff -f
