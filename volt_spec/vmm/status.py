"""volt-vmm's exit codes, named in one place."""

OK = 0              # the guest powered off or reset itself
VMM_ERROR = 1       # bad input (missing file, not a kernel, bad size) or a host/KVM problem
USAGE = 2           # bad command line
GUEST_CRASH = 3     # triple fault, KVM internal/emulation error, failed VM entry
KILLED = 4          # asked to stop and the guest did not power off in time
