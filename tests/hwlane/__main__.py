"""python -m tests.hwlane [--set ci|full] [-- PYTEST ARGS]"""

from .lane import main

raise SystemExit(main())
