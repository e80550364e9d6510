"""The jail every VMM that volt starts runs in, like Firecracker's jailer.

Before the VMM touches guest input it is in its own mount, pid, ipc and uts namespaces, pivoted
into a per-VM root that holds only what it needs (its kernel, initrd, disks, state directory,
and read-only what a Python VMM needs to run), runs as a per-VM uid/gid with no capabilities,
no_new_privs, rlimits and a seccomp filter, in its own cgroup. See `enter.py` for the order.
"""
