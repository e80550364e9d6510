"""The snapshot policy a VMM carries out by itself (vm.json's `policy`, --policy FILE, PUT /policy).

The spec's `snapshots` section maps to it in one function (runner/vmconfig.py); durations are
seconds here, parsed once by the runner. Checked whole before any of it is used: a body with
one bad field is refused with the field named, and a running policy stays as it was.
"""

from __future__ import annotations

from .devices import device_name
from .fields import Reader, Section, VmmConfigError

TRIGGERS = {"ready": ("marker",), "interval": ("every_s",), "console": ("match",), "stop": ()}
DEFAULT_READY_MARKER = "VOLT-READY"


class TriggerConfig(Section):
    __slots__ = ("trigger", "marker", "every_s", "match")

    def __init__(self, trigger: str, marker: str | None = None, every_s: float | None = None,
                 match: str | None = None) -> None:
        self.trigger, self.marker, self.every_s, self.match = trigger, marker, every_s, match

    @classmethod
    def from_dict(cls, data: object, where: str) -> "TriggerConfig":
        kind = data.get("trigger") if isinstance(data, dict) else None
        if kind not in TRIGGERS:
            raise VmmConfigError(f"{where}.trigger must be one of {', '.join(TRIGGERS)}")
        r = Reader(data, f"{where} (a {kind} trigger)", ("trigger", *TRIGGERS[kind]))
        r.where = where
        if kind == "ready":
            return cls(kind, marker=r.text("marker", DEFAULT_READY_MARKER))
        if kind == "interval":
            return cls(kind, every_s=r.number("every_s"))
        if kind == "console":
            from ...patterns import PatternError, compile_pattern   # RE2: only when there is a pattern
            match = r.text("match")
            try:
                compile_pattern(match)
            except PatternError as e:
                raise VmmConfigError(f"{where}.match: {e}") from None
            return cls(kind, match=match)
        return cls(kind)

    def to_dict(self) -> dict:
        return {"trigger": self.trigger, **{k: getattr(self, k) for k in TRIGGERS[self.trigger]}}


class RetainConfig(Section):
    """Keep at most `count` snapshots, none older than `max_age_s` (None: no such limit)."""

    __slots__ = ("count", "max_age_s")

    def __init__(self, count: int | None = None, max_age_s: float | None = None) -> None:
        self.count, self.max_age_s = count, max_age_s

    @classmethod
    def from_dict(cls, data: object, where: str = "retain") -> "RetainConfig":
        r = Reader(data, where, cls.__slots__)
        count = None if r.get("count", None) is None else r.int("count", low=1)
        age = None if r.get("max_age_s", None) is None else r.number("max_age_s")
        return cls(count, age)


class PolicyConfig(Section):
    """`full_every`: snapshots are diffs on the one before, a full one every this many (None: all full)."""

    __slots__ = ("vm", "snapshot_dir", "machine_hash", "spec", "clock", "triggers", "retain", "shape_hash",
                 "full_every")

    def __init__(self, vm: str = "vm", snapshot_dir: str | None = None, machine_hash: str | None = None,
                 spec: dict | None = None, clock: str = "continue", triggers: list | None = None,
                 retain: RetainConfig | None = None, shape_hash: str | None = None,
                 full_every: int | None = None) -> None:
        self.vm, self.snapshot_dir, self.machine_hash, self.spec = vm, snapshot_dir, machine_hash, spec
        self.clock, self.triggers, self.retain = clock, triggers or [], retain or RetainConfig()
        self.shape_hash, self.full_every = shape_hash, full_every

    @classmethod
    def from_dict(cls, data: object, where: str = "policy") -> "PolicyConfig":
        r = Reader(data, where, cls.__slots__)
        spec = r.get("spec", None)
        if spec is not None and not isinstance(spec, dict):
            raise VmmConfigError(f"{where}.spec must be an object")
        triggers = [TriggerConfig.from_dict(t, f"{where}.triggers[{i}]")
                    for i, t in enumerate(r.items("triggers", f"{where}.triggers"))]
        return cls(device_name(r.get("vm", "vm"), f"{where}.vm"), r.optional_text("snapshot_dir"),
                   r.optional_text("machine_hash"), spec, r.choice("clock", ("continue", "realtime"), "continue"),
                   triggers, RetainConfig.from_dict(r.get("retain", {}), f"{where}.retain"),
                   r.optional_text("shape_hash"),
                   None if r.get("full_every", None) is None else r.int("full_every", low=1))

    def to_dict(self) -> dict:
        return dict(super().to_dict(), triggers=[t.to_dict() for t in self.triggers], retain=self.retain.to_dict())

    def kinds(self, kind: str) -> list[TriggerConfig]:
        return [t for t in self.triggers if t.trigger == kind]
