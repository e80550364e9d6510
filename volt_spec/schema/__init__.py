"""VM specs: the YAML format (vm.schema.json), loading with positions, and `volt validate`.

Importing this package is cheap: ruamel.yaml and jsonschema are imported on first use.
"""

from __future__ import annotations

from .errors import SpecError
from .files import schema_text
from .host import HostLimits
from .loader import load_specs, validate_command
from .model import VmSpec

__all__ = ["HostLimits", "SpecError", "VmSpec", "load_specs", "schema_text", "validate_command"]
