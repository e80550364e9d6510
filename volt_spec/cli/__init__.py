"""`volt`: the user-facing command line (typer). Each command parses, then calls the library.

The commands live in modules named for what they act on (common.py holds the typer apps and the
helpers they share); importing a module registers its commands on `app`, so the import order
in `_app` is the order `volt --help` lists them in. Importing this package imports no typer: a
plain `volt status`, `volt apply PATH...` or `volt validate PATH...` runs without it (plain.py).
"""

from __future__ import annotations

import os
import sys

from .. import status_codes as rc
from .plain import dispatch, err

__all__ = ["app", "main", "specs", "vms", "snapshots", "agent", "host"]


def _app():
    """typer's app with every command registered (imported on first use)."""
    global specs, vms, snapshots, agent, host
    _import_typer_without_rich()
    from . import specs, vms, snapshots, agent, host  # noqa: I001 - in the order `volt --help` lists their commands
    from .common import app
    return app


def _import_typer_without_rich() -> None:
    """typer-slim formats help and errors with rich when something else installed it (import-linter
    does, in the test venv): ~60 ms more a command, and help that differs from a plain install's
    only by escaped brackets (`\\[default: table]`: markup is off)."""
    if "typer" in sys.modules:
        return
    saved = sys.modules.get("rich")
    sys.modules["rich"] = None           # `import rich` raises ImportError while typer is imported
    try:
        __import__("typer")
    finally:
        if saved is None:
            del sys.modules["rich"]
        else:
            sys.modules["rich"] = saved


def __getattr__(name: str):
    """`app` and the command modules, imported on first use (PEP 562)."""
    if name == "app":
        return _app()
    if name in __all__ and name != "main":
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    from ..names import BadName
    try:
        code = dispatch(sys.argv[1:])
        if code is not None:
            sys.exit(code)
        if "_VOLT_COMPLETE" in os.environ:      # a tab press in a shell that sourced `volt completion`
            _import_typer_without_rich()
            from typer._completion_classes import completion_init
            completion_init()
        _app()(prog_name="volt")
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
