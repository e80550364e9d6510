"""A pytest plugin for the lane: each finished test's outcome goes to a file as it finishes, and a
second run skips the tests a first run finished.

The L1 is emulated, and under multi-threaded TCG its own kernel now and then panics in its SVM
entry path. What the tests had already shown must not be lost with it: the host reads this log
(on the results share, one fsync'd line per test) and boots a fresh L1 for the rest only.

Enabled by `-p tests.hwlane.progress` with $VOLT_LANE_PROGRESS (the log to append to) and,
optionally, $VOLT_LANE_DONE (a file of node ids, one per line, to deselect).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

PROGRESS_ENV = "VOLT_LANE_PROGRESS"
DONE_ENV = "VOLT_LANE_DONE"
# Worst first: a test's outcome is the worst of its phases (a failed teardown makes it an error).
OUTCOMES = ("errors", "failed", "passed", "skipped")


# A test that failed while one of its guests sat silent, its VMM alive and answering "Running",
# gets this on its failure message: the lane runs it again (lane.py RERUN_ON). Seen in the lane,
# on no host: a test guest silent after tick 10 with dirty logging on, a Linux silent 6 s into
# its boot (no exit, no output for 300-600 s); the peer, QEMU in the same L1, triple-faults there
# now and then. A VMM that does not answer (our deadlock) is not a stalled guest.
STALLED = "guest stalled"
QUIET_S = 120.0               # console silence that makes a running guest stalled (lane seconds)
RERUN = "rerun"        # pytest-rerunfailures ran it again (logged, and reported by the lane)
WHY = "why"            # "why <node id>\t<the failure's one line>": CI shows the lane's last lines only


def phase_outcome(when: str, outcome: str) -> str | None:
    """What one phase report says about its test: None when it says nothing new."""
    if outcome == RERUN:
        return RERUN
    if outcome == "failed":
        return "failed" if when == "call" else "errors"
    if outcome == "skipped":
        return "skipped"
    return "passed" if when == "call" else None


def failure_line(report) -> str:
    """The one line that says why a test failed: its crash message's first line and, shortened,
    its last lines (where a console dump or a command's stderr ends), joined by " | " (CI keeps
    only the lane's last lines, so this is all a failure in CI leaves)."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "")
    return why_of(text)


def why_of(text: str, tail_lines: int = 4, limit: int = 700) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    first = lines[0] if len(lines[0]) <= 300 else lines[0][:297] + "..."
    tail = [ln if len(ln) <= 160 else ln[:157] + "..." for ln in lines[1:][-tail_lines:]]
    if len(lines) > tail_lines + 1:
        tail.insert(0, "...")
    out = " | ".join([first, *tail])
    return out if len(out) <= limit else out[:limit - 3] + "..."


def read_progress(path: Path, reruns: list[str] | None = None,
                  reasons: dict[str, str] | None = None) -> dict[str, str]:
    """{node id: outcome} from a progress log (a torn last line, from a crash, is ignored);
    the ids of tests run again go to `reruns`, why each failed to `reasons`."""
    tests: dict[str, str] = {}
    if not path.is_file():
        return tests
    for line in path.read_text(errors="replace").split("\n")[:-1]:     # only whole lines
        outcome, _, nodeid = line.partition(" ")
        if outcome == RERUN and reruns is not None:
            reruns.append(nodeid)
        if outcome == WHY and reasons is not None:
            nodeid, _, why = nodeid.partition("\t")
            reasons[nodeid] = why
        if outcome in OUTCOMES and nodeid:
            old = tests.get(nodeid)
            tests[nodeid] = outcome if old is None else min(old, outcome, key=OUTCOMES.index)
    return tests


def pytest_collection_modifyitems(config, items):
    done_file = os.environ.get(DONE_ENV)
    if not done_file or not Path(done_file).is_file():
        return
    done = set(Path(done_file).read_text().splitlines())
    away = [item for item in items if item.nodeid in done]
    if away:
        config.hook.pytest_deselected(items=away)
        items[:] = [item for item in items if item.nodeid not in done]


def pytest_runtest_logreport(report):
    path = os.environ.get(PROGRESS_ENV)
    if not path or os.environ.get("PYTEST_XDIST_WORKER"):      # the controller writes, once per report
        return
    outcome = phase_outcome(report.when, report.outcome)
    if outcome is None:
        return
    record = f"{outcome} {report.nodeid}\n"
    if outcome in ("failed", "errors"):
        record += f"{WHY} {report.nodeid}\t{failure_line(report)}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, record.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def stalled_vms(root: Path, now: float, quiet_s: float = QUIET_S, running=None) -> list[str]:
    """VMs under `root` (any $VOLT_HOME in a worker's temporary directories) whose VMM runs and
    answers "Running", but whose console has been silent for `quiet_s`."""
    running = running or _api_says_running
    out = []
    for console in sorted(root.glob("**/vms/*/console.log")):
        vm = console.parent
        try:
            quiet = now - console.stat().st_mtime
            instance = json.loads((vm / "instance.json").read_text())
        except (OSError, ValueError):
            continue
        if quiet >= quiet_s and not _ended(vm, instance) and running(instance):
            out.append(f"vm/{vm.name} silent for {quiet:.0f} s")
    return out


def _ended(vm: Path, instance: dict) -> bool:
    from volt_spec.runner.procs import is_alive
    try:
        ended = json.loads((vm / "exit.json").read_text())
        if ended.get("generation") == instance.get("generation"):
            return True
    except (OSError, ValueError):
        pass
    return not is_alive(instance.get("vmm_pid"), instance.get("vmm_start"))


def _api_says_running(instance: dict) -> bool:
    from volt_spec.api.client import ApiClient
    try:
        return ApiClient(str(instance["api_sock"]), timeout=10.0).get("/vm").get("state") == "Running"
    except Exception:  # noqa: BLE001 - no answer: not a stalled guest (maybe our VMM is stuck)
        return False


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item, call):
    """In the lane, a failure while a guest sat stalled says so in its message (before the report
    is made and before pytest-rerunfailures reads it)."""
    exc = call.excinfo.value if call.excinfo is not None else None
    if not os.environ.get(PROGRESS_ENV) or call.when not in ("setup", "call") or not isinstance(exc, AssertionError):
        return None
    try:
        stalled = stalled_vms(item.config._tmp_path_factory.getbasetemp(), time.time())
    except Exception:  # noqa: BLE001 - a look for stalls must never hide the failure itself
        stalled = []
    if stalled:
        first = str(exc.args[0]) if exc.args else ""
        exc.args = (f"{first}\n{STALLED}: {', '.join(stalled)}", *exc.args[1:])
    return None
