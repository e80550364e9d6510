"""`load_specs` and `volt validate`: files -> documents -> schema (stage 1) -> rules (stage 2)."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from .errors import SpecError
from .host import HostLimits
from .messages import schema_errors
from .model import VmSpec, build_spec
from .rules import cross_rules, document_rules
from .source import Document, load_documents

SPEC_SUFFIXES = (".yaml", ".yml")
MAX_SPEC_BYTES = 32 << 20        # a spec file larger than this is refused unread (5000 VMs take ~1 MiB)


def expand_paths(paths: list[str]) -> tuple[list[str], list[SpecError]]:
    """Files named directly, plus every *.yaml/*.yml directly inside each directory (sorted)."""
    files: list[str] = []
    errors: list[SpecError] = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, n) for n in os.listdir(path)
                           if n.endswith(SPEC_SUFFIXES) and os.path.isfile(os.path.join(path, n)))
            if not found:
                errors.append(SpecError(path, 0, 0, "directory has no *.yaml or *.yml files"))
            files.extend(found)
        elif os.path.exists(path):
            files.append(path)
        else:
            errors.append(SpecError(path, 0, 0, "no such file or directory"))
    seen: set[str] = set()
    unique = []
    for f in files:                     # the same file named twice is read once
        if (real := os.path.realpath(f)) not in seen:
            seen.add(real)
            unique.append(f)
    return unique, errors


def _read(file: str) -> tuple[str | None, SpecError | None]:
    """A spec file's text: a regular file (a FIFO or /dev/zero would block or never end; a
    symlink to a regular file is fine) of at most MAX_SPEC_BYTES, in UTF-8."""
    from ..fsutil import read_regular
    try:
        raw = read_regular(file, MAX_SPEC_BYTES, follow=True)
    except OSError as e:
        return None, SpecError(file, 0, 0, f"cannot read: {e.strerror or e}")
    if len(raw) > MAX_SPEC_BYTES:
        return None, SpecError(file, 0, 0, f"larger than {MAX_SPEC_BYTES >> 20} MiB; not a spec file")
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, SpecError(file, 1, 1, f"not UTF-8 text (byte {e.start})")


def _shape_error(doc: Document) -> SpecError | None:
    if doc.data is None:
        return SpecError(doc.file, *doc.start, "empty document: expected a VirtualMachine mapping")
    if not isinstance(doc.data, dict):
        kind = "a list" if isinstance(doc.data, list) else f"the scalar {doc.data!r}"[:80]
        return SpecError(doc.file, *doc.start,
                         f"document is {kind}; expected a VirtualMachine mapping (key: value)")
    return None


def load_specs(paths: list[str], limits: HostLimits | None = None
               ) -> tuple[list[VmSpec], list[SpecError]]:
    """Every VM in `paths` (files or directories), and every problem found, sorted by file/line.

    A VmSpec is returned only for documents without errors; callers should refuse to act on
    anything when the error list is not empty. `limits` defaults to HostLimits.detect().
    """
    limits = limits if limits is not None else HostLimits.detect()
    files, errors = expand_paths(paths)
    mappings: list[Document] = []
    failed: set[int] = set()
    for file in files:
        text, error = _read(file)
        if error is not None:
            errors.append(error)
            continue
        docs, yaml_errors = load_documents(file, text)
        errors.extend(yaml_errors)
        for doc in docs:
            if (shape := _shape_error(doc)) is not None:
                errors.append(shape)
                continue
            problems = schema_errors(doc) + document_rules(doc, limits)
            if problems:
                failed.add(id(doc))
            errors.extend(problems)
            mappings.append(doc)
    for doc, error in cross_rules(mappings):
        failed.add(id(doc))
        errors.append(error)
    specs = [build_spec(d.file, d.data) for d in mappings if id(d) not in failed]
    return specs, sorted(set(errors))


def summary(specs: list[VmSpec], files: int) -> str:
    vms = f"{len(specs)} VM{'s' if len(specs) != 1 else ''}"
    return f"{vms} valid in {files} file{'s' if files != 1 else ''}"


def validate_command(paths: list[str], out: TextIO | None = None,
                     limits: HostLimits | None = None) -> int:
    """`volt validate PATH...`: print every error (or a one-line summary); return the exit code."""
    out = out if out is not None else sys.stdout
    if not paths:
        print("volt validate: give at least one spec file or directory", file=out)
        return 2
    specs, errors = load_specs(paths, limits)
    for e in errors:
        print(e, file=out)
    if errors:
        n = len(errors)
        print(f"{n} error{'s' if n != 1 else ''}", file=out)
        return 1
    files, _ = expand_paths(paths)
    print(summary(specs, len(files)), file=out)
    return 0
