"""The test CLI helper's console waits: a line the guest is still writing does not count."""

from __future__ import annotations

import pytest

from .voltcli import Volt


def test_a_marker_in_a_line_still_being_written_is_not_seen_yet(tmp_path):
    volt = Volt(tmp_path / "home")
    log = tmp_path / "home" / "vms" / "w" / "console.log"
    log.parent.mkdir(parents=True)
    log.write_text("VOLT-READY\nmem-ok 2b2")
    with pytest.raises(AssertionError, match="not in vm/w's console"):
        volt.wait_log("w", "mem-ok", timeout=0.2)
    log.write_text("VOLT-READY\nmem-ok 2b2af3acbdd4a84c\ntick 1")
    assert volt.wait_log("w", "mem-ok", timeout=0.2) == "VOLT-READY\nmem-ok 2b2af3acbdd4a84c\n"
