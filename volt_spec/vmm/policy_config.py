"""The snapshot policy a VMM is given (--policy FILE or PUT /policy), checked whole before use.

It is the spec's `snapshots` section as volt resolved it (durations in seconds beside the
text), plus where and for whom: the same rules as the spec, so a body that would not validate
as a spec is refused with the field named, and nothing of it is applied (all or nothing).
"""

from __future__ import annotations

FIELDS = {"vm", "snapshot_dir", "machine_hash", "spec", "triggers", "retain", "clock", "restore"}
TRIGGER_FIELDS = {"ready": {"marker"}, "interval": {"every", "everySeconds"}, "console": {"match"}, "stop": set()}
RETAIN_FIELDS = {"count", "maxAge", "maxAgeSeconds"}


class PolicyError(ValueError):
    """A policy that cannot be carried out: the message names the field."""


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_policy(policy: object) -> dict:
    """`policy` if every field is one the VMM knows, of the right type and range; else PolicyError."""
    if not isinstance(policy, dict):
        raise PolicyError("the policy must be a JSON object")
    unknown = sorted(set(policy) - FIELDS)
    if unknown:
        raise PolicyError(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(FIELDS))})")
    for key in ("snapshot_dir", "machine_hash"):
        if policy.get(key) is not None and not isinstance(policy[key], str):
            raise PolicyError(f"{key} must be a string")
    if policy.get("clock", "continue") not in ("continue", "realtime"):
        raise PolicyError("clock must be continue or realtime")
    triggers = policy.get("triggers", [])
    if not isinstance(triggers, list):
        raise PolicyError("triggers must be a list")
    for i, trigger in enumerate(triggers):
        _check_trigger(trigger, f"triggers[{i}]")
    _check_retain(policy.get("retain", {}))
    return policy


def _check_trigger(t: object, where: str) -> None:
    kind = t.get("trigger") if isinstance(t, dict) else None
    if kind not in TRIGGER_FIELDS:
        raise PolicyError(f"{where}.trigger must be one of {', '.join(TRIGGER_FIELDS)}")
    extra = sorted(set(t) - TRIGGER_FIELDS[kind] - {"trigger"})
    if extra:
        raise PolicyError(f"{where}: a {kind} trigger has no field(s) {', '.join(extra)}")
    if kind == "ready" and not (isinstance(t.get("marker", "x"), str) and t.get("marker", "x")):
        raise PolicyError(f"{where}.marker must be a non-empty string")
    if kind == "interval" and not (_number(t.get("everySeconds")) and t["everySeconds"] > 0):
        raise PolicyError(f"{where}.everySeconds must be a positive number")
    if kind == "console":
        from ..patterns import PatternError, compile_pattern
        try:
            compile_pattern(t.get("match"))
        except PatternError as e:
            raise PolicyError(f"{where}.match: {e}") from None


def _check_retain(retain: object) -> None:
    if not isinstance(retain, dict):
        raise PolicyError("retain must be an object")
    extra = sorted(set(retain) - RETAIN_FIELDS)
    if extra:
        raise PolicyError(f"retain has no field(s) {', '.join(extra)}")
    count, age = retain.get("count"), retain.get("maxAgeSeconds")
    if count is not None and not (isinstance(count, int) and not isinstance(count, bool) and count >= 1):
        raise PolicyError("retain.count must be an integer of at least 1")
    if age is not None and not (_number(age) and age > 0):
        raise PolicyError("retain.maxAgeSeconds must be a positive number")
