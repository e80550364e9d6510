"""`volt`: the user-facing command line (typer). Each command parses, then calls the library.

The commands live in modules named for what they act on (common.py holds the typer apps and the
helpers they share); importing a module registers its commands on `app`, so the import order
below is the order `volt --help` lists them in.
"""

from __future__ import annotations

import sys

from .. import status_codes as rc
from . import specs, vms, snapshots, agent, host  # noqa: I001 - in the order `volt --help` lists their commands
from .common import app, err

__all__ = ["app", "main", "specs", "vms", "snapshots", "agent", "host"]


def main() -> None:
    from ..names import BadName
    try:
        app()
    except BadName as e:                 # a name that would have become a path outside $VOLT_HOME
        err(str(e))
        sys.exit(rc.USAGE)
    except OSError as e:                 # a full disk, an I/O error, a read-only $VOLT_HOME
        from ..fsutil import os_error
        err(os_error(e))
        sys.exit(rc.FAILED)
    except KeyboardInterrupt:
        err("interrupted")
        sys.exit(130)
