"""spec.replicas: one document, N clones named NAME-0 .. NAME-(N-1).

What makes each clone its own: its name, its tap (the template's {name} and {index} filled in), its
MAC (derived from the clone's name, or counted up from a given one) and its copy of every writable
disk (the runner makes it: runner/clones.py). Pure functions: the schema's stage 2 and the model
both use them, so what is validated is what is built.
"""

from __future__ import annotations

import hashlib

TAP_MAX = 15                        # IFNAMSIZ - 1
NAME_MAX = 63                       # a VM name is a DNS label


def vm_names(name: str, replicas: int | None) -> list[tuple[str, int | None]]:
    """(VM name, replica index) of every VM a document declares: itself, or its clones."""
    if replicas is None:
        return [(name, None)]
    return [(f"{name}-{i}", i) for i in range(replicas)]


def tap_name(template: str, vm: str, index: int | None) -> str:
    """The tap a VM uses: {name} is the VM's name, {index} its replica index (0 without replicas)."""
    return template.replace("{name}", vm).replace("{index}", str(index or 0))


def templated(tap: str) -> bool:
    return "{name}" in tap or "{index}" in tap


def clone_mac(vm: str, nic: str, given: str | None, index: int) -> str:
    """A clone's MAC: a given one counted up by the index (its low 24 bits; the vendor part kept),
    else one derived from the clone's and the interface's names, locally administered, unicast."""
    if given:
        octets = [int(p, 16) for p in given.split(":")]
        low = ((octets[3] << 16 | octets[4] << 8 | octets[5]) + index) & 0xFFFFFF
        octets[3:] = [low >> 16, (low >> 8) & 0xFF, low & 0xFF]
    else:
        digest = hashlib.sha256(f"volt-mac/{vm}/{nic}".encode()).digest()
        octets = [(digest[0] & 0xFC) | 0x02, *digest[1:6]]
    return ":".join(f"{o:02x}" for o in octets)


def problems(name: str, replicas: int | None, taps: list[str]) -> list[tuple[int | None, str]]:
    """Why the clones cannot be made, as (index of the tap concerned, or None, message)."""
    out: list[tuple[int | None, str]] = []
    vms = vm_names(name, replicas)
    if replicas and len(vms[-1][0]) > NAME_MAX:
        out.append((None, f"the last clone's name {vms[-1][0]!r} is longer than {NAME_MAX} characters "
                          f"(shorten metadata.name)"))
    for i, tap in enumerate(taps):
        if replicas is not None and replicas > 1 and not templated(tap):
            out.append((i, f"every clone needs a tap of its own: write {{name}} or {{index}} in it "
                           f"(vt-{{name}}, or {tap[:11]}{{index}})"))
            continue
        longest = max((tap_name(tap, vm, index) for vm, index in vms), key=len, default=None)
        if longest is not None and len(longest) > TAP_MAX:
            out.append((i, f"tap {longest!r} is {len(longest)} characters once filled in "
                           f"(at most {TAP_MAX})"))
    return out
