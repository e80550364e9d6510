"""`load_specs` and `volt validate`: files -> documents -> schema (stage 1) -> rules (stage 2)."""

from __future__ import annotations

import os
import sys

from . import cache as spec_cache
from .errors import SpecError
from .host import HostLimits
from .messages import schema_errors
from .model import VmSpec, build_specs
from .rules import cross_rules, document_rules
from .source import Document, load_documents

TYPE_CHECKING = False
if TYPE_CHECKING:                  # annotations only: typing costs ~2 ms a command
    from typing import TextIO

SPEC_SUFFIXES = (".yaml", ".yml")
MAX_SPEC_BYTES = 32 << 20        # a spec file larger than this is refused unread (5000 VMs take ~1 MiB)


STDIN = "-"                       # a path of "-": the specs come on standard input
STDIN_NAME = "<stdin>"            # how its documents and errors name it


def expand_paths(paths: list[str], recursive: bool = False) -> tuple[list[str], list[SpecError]]:
    """Files named directly, plus every *.yaml/*.yml inside each directory (sorted; with
    `recursive`, in its subdirectories too, hidden ones such as .git skipped); "-" is stdin."""
    files: list[str] = []
    errors: list[SpecError] = []
    for path in paths:
        if path == STDIN:
            files.append(STDIN)
        elif os.path.isdir(path):
            found = _spec_files(path, recursive)
            if not found:
                errors.append(SpecError(path, 0, 0, "directory has no *.yaml or *.yml files"
                                        + ("" if recursive else " (-R reads its subdirectories)")))
            files.extend(found)
        elif os.path.exists(path):
            files.append(path)
        else:
            errors.append(SpecError(path, 0, 0, "no such file or directory"))
    seen: set[str] = set()
    unique = []
    for f in files:                     # the same file named twice is read once
        if (real := f if f == STDIN else os.path.realpath(f)) not in seen:
            seen.add(real)
            unique.append(f)
    return unique, errors


def _spec_files(top: str, recursive: bool) -> list[str]:
    if not recursive:
        return sorted(os.path.join(top, n) for n in os.listdir(top)
                      if n.endswith(SPEC_SUFFIXES) and os.path.isfile(os.path.join(top, n)))
    found = []
    for root, dirs, names in os.walk(top):          # symlinked directories are not followed
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, n) for n in sorted(names)
                  if n.endswith(SPEC_SUFFIXES) and os.path.isfile(os.path.join(root, n))]
    return found


def _read_stdin() -> tuple[str | None, SpecError | None]:
    raw = sys.stdin.buffer.read(MAX_SPEC_BYTES + 1)
    return _decode(STDIN_NAME, raw)


def _read(file: str) -> tuple[str | None, SpecError | None]:
    """A spec file's text: a regular file (a FIFO or /dev/zero would block or never end; a
    symlink to a regular file is fine) of at most MAX_SPEC_BYTES, in UTF-8."""
    from ..fsutil import read_regular
    if file == STDIN:
        return _read_stdin()
    try:
        raw = read_regular(file, MAX_SPEC_BYTES, follow=True)
    except OSError as e:
        return None, SpecError(file, 0, 0, f"cannot read: {e.strerror or e}")
    return _decode(file, raw)


def _decode(file: str, raw: bytes) -> tuple[str | None, SpecError | None]:
    """At most MAX_SPEC_BYTES of UTF-8 text."""
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


def load_specs(paths: list[str], limits: HostLimits | None = None, recursive: bool = False
               ) -> tuple[list[VmSpec], list[SpecError]]:
    """Every VM in `paths` (files or directories), and every problem found, sorted by file/line.

    A VmSpec is returned only for documents without errors; callers should refuse to act on
    anything when the error list is not empty. `limits` defaults to HostLimits.detect().
    """
    limits = limits if limits is not None else HostLimits.detect()
    files, errors = expand_paths(paths, recursive)
    mappings: list[Document] = []
    failed: set[int] = set()
    for file in files:
        text, error = _read(file)
        if error is not None:
            errors.append(error)
            continue
        file = STDIN_NAME if file == STDIN else file
        cached = spec_cache.lookup(file, text)          # the schema passed this very text before
        docs, yaml_errors = (cached, []) if cached else load_documents(file, text)
        errors.extend(yaml_errors)
        passed = not yaml_errors
        for doc in docs:
            if (shape := _shape_error(doc)) is not None:
                errors.append(shape)
                passed = False
                continue
            stage1 = [] if cached else schema_errors(doc)
            passed = passed and not stage1
            problems = stage1 + document_rules(doc, limits)
            if problems:
                failed.add(id(doc))
            errors.extend(problems)
            mappings.append(doc)
        if passed and not cached:
            spec_cache.store(text, docs)
    for doc, error in cross_rules(mappings):
        failed.add(id(doc))
        errors.append(error)
    specs = [vm for d in mappings if id(d) not in failed for vm in build_specs(d.file, d.data)]
    return specs, sorted(set(errors))


def summary(specs: list[VmSpec], files: int) -> str:
    vms = f"{len(specs)} VM{'s' if len(specs) != 1 else ''}"
    return f"{vms} valid in {files} file{'s' if files != 1 else ''}"


def validate_command(paths: list[str], out: TextIO | None = None,
                     limits: HostLimits | None = None, recursive: bool = False) -> int:
    """`volt validate PATH...`: print every error (or a one-line summary); return the exit code."""
    out = out if out is not None else sys.stdout
    if not paths:
        print("volt validate: give at least one spec file or directory", file=out)
        return 2
    specs, errors = load_specs(paths, limits, recursive)
    for e in errors:
        print(e, file=out)
    if errors:
        n = len(errors)
        print(f"{n} error{'s' if n != 1 else ''}", file=out)
        return 1
    files = [p for p in expand_paths([p for p in paths if p != STDIN], recursive)[0]] + [STDIN] * (STDIN in paths)
    print(summary(specs, len(files)), file=out)
    return 0
