"""The jail every VMM that volt starts runs in, like Firecracker's jailer.

Before the VMM touches guest input it is in its own mount, pid, ipc and uts namespaces, pivoted
into a per-VM root that holds only what it needs (its kernel, initrd, disks, state directory,
and read-only what a Python VMM needs to run), runs as a per-VM uid/gid with no capabilities,
no_new_privs, rlimits and a seccomp filter, in its own cgroup. See `enter.py` for the order.
"""

# The pipe a jailed VMM reads one byte from before it reads guest input: its supervisor writes
# it once the VMM is in its cgroups (jail/enter.spawn; the move overlaps the VMM's start-up).
GO_FD_ENV = "VOLT_JAIL_GO_FD"
GO = b"1"


def enter_device_thread() -> None:
    """For a thread that handles guest-made data (vCPUs, virtio I/O): stack the narrow device
    filter, when the process has a filter at all (seccomp.py is loaded only then, so an
    unjailed VMM does not import it)."""
    import sys
    seccomp = sys.modules.get(__name__ + ".seccomp")
    if seccomp is not None:
        seccomp.enter_thread("device")
