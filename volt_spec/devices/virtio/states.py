"""Frozen snapshot state of a virtio-mmio device (Firecracker persist style).

Kept apart from the transport so the boot path never imports `dataclasses`;
`mmio.py` imports this module only inside `save()` and re-exports the class
lazily. Queue and device-specific sub-states are plain dicts of ints, bools,
strings and lists, so `snapshot.device_state.encode_state` turns the whole
state into JSON without knowing about virtio.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VirtioMmioState:
    """Transport registers, each queue's `Virtqueue.save()` dict and the device's own dict."""

    device_id: int = 0
    device_features: int = 0
    driver_features: int = 0
    device_features_sel: int = 0
    driver_features_sel: int = 0
    status: int = 0
    queue_sel: int = 0
    interrupt_status: int = 0
    config_generation: int = 0
    queues: tuple = ()            # of dicts: size, ready, desc, avail, used, last_avail_idx,
                                  # used_idx, event_idx, indirect
    device: dict = field(default_factory=dict)


__all__ = ["VirtioMmioState"]
