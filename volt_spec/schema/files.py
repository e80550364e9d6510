"""The schema file shipped inside the package, and where spec paths point."""

from __future__ import annotations

import functools
import os
import pathlib

SCHEMA_FILE = pathlib.Path(__file__).with_name("vm.schema.json")
BUILTIN_TESTGUEST = "builtin:testguest"
BUILTIN_PREFIX = "builtin:"


@functools.cache
def schema_text() -> str:
    """vm.schema.json as shipped (what `volt schema` prints and editors load)."""
    return SCHEMA_FILE.read_text(encoding="utf-8")


def resolve(spec_file: str, path: str) -> str:
    """A path written in a spec, made absolute against the spec file's directory."""
    base = os.path.dirname(os.path.abspath(spec_file))
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))
