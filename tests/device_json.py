"""Device states the way a snapshot carries them, for the devices' round-trip tests."""

from __future__ import annotations

import json

from volt_spec.snapshot import codec


def via_snapshot(state: object) -> object:
    """`state` encoded by the product's codec, through JSON text, and decoded again."""
    return codec.decode(type(state), json.loads(json.dumps(codec.encode(state))))
