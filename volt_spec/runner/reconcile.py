"""One reconcile pass over applied paths: apply every spec, then prune what their scopes no longer
declare. `volt apply` makes one pass; `volt agent` makes one per sync."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from . import apply as ap
from .clones import surplus
from .owner import Resolver

PARALLEL = 8            # VMs applied at once (each start mostly waits on its VMM)


def apply_paths(specs, paths: list[str], home: Path, dry_run: bool = False, prune: bool = False,
                source: str | None = None, force_conflicts: bool = False, warn=ap._stderr,
                skip=None, recursive: bool = False) -> Iterator[ap.Result]:
    """A Result per VM, in the specs' order, then one per pruned VM. `skip(spec)` -> a Result
    leaves that VM alone this pass (the agent's restart back-off)."""
    resolver = Resolver(source)
    for spec in specs:                        # read every repository's origin and commit once,
        resolver.owner(spec.source)           # before the threads share the resolver
        resolver.commit(Path(spec.source))

    for name in surplus(specs, home, lambda s: resolver.owner(s.source)):   # clones a spec no longer declares
        yield ap.Result(name, ap.DELETED, "no longer declared") if dry_run else ap.delete(name, home, reason="no longer declared")

    def one(spec) -> ap.Result:
        held = skip(spec) if skip else None
        if held is not None:
            return held
        if dry_run:
            return _dry_run(spec, home, resolver, force_conflicts)
        return ap.apply_one(spec, home, resolver, force_conflicts, warn)
    if len(specs) > 1 and not dry_run:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=min(PARALLEL, len(specs)), thread_name_prefix="apply") as pool:
            yield from pool.map(one, specs)   # VMs start side by side; results in the specs' order
    else:
        yield from map(one, specs)
    if prune:
        for name in ap.prunable(specs, home, [resolver.scope(p, recursive) for p in paths if p != "-"]):
            yield ap.Result(name, ap.DELETED) if dry_run else ap.delete(name, home)
    if not dry_run and (any(s.snapshots.get("pool") for s in specs) or (home / "pool").is_dir()):
        from .pool import fill
        fill(home)                             # warm VMMs for the specs' snapshots.pool, in the background


def _dry_run(spec, home: Path, resolver: Resolver, force_conflicts: bool) -> ap.Result:
    from .home import VmDir
    action, detail, refused = ap.preflight(spec, home, VmDir(home, spec.name).read_applied(),
                                           resolver.owner(spec.source), resolver, force_conflicts)
    return ap.Result(spec.name, action, detail if action != ap.RESTORED else "", error=refused or None)
