"""Which source owns a VM: the identity that survives a clone or a move of the spec repository.

A VM records its owner when applied: `--source NAME` when given; else, for a spec file inside a
git repository with an `origin` remote, that remote's normalized URL plus the file's path from the
repository root (two checkouts of one upstream own the same VMs); else the file's absolute path.
`--prune` deletes only VMs whose owner lies under the applied path (a Scope), and applying a spec
for a VM another source owns is a conflict (kubectl server-side apply's field managers).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_SCP_LIKE = re.compile(r"^(?:[^@/]+@)?(?P<host>[^:/]+):(?P<path>[^/].*)$")   # git@host:org/repo.git
_URL = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?:[^@/]*@)?(?P<host>[^/:]*)(?::(?P<port>\d+))?(?P<path>/.*)?$",
                  re.IGNORECASE)
_DEFAULT_PORTS = {"https": "443", "http": "80", "ssh": "22", "git": "9418"}


class Owner:
    """A VM's owner: `source` (a --source name, `git:<url>`, or None for a plain file) and `file`
    (the spec file's path from the repository root, or its absolute path)."""

    __slots__ = ("source", "file")

    def __init__(self, source: str | None, file: str) -> None:
        self.source, self.file = source, file

    @property
    def id(self) -> str:
        return f"{self.source}//{self.file}" if self.source else self.file

    def to_dict(self) -> dict:
        return {"source": self.source, "file": self.file}

    @classmethod
    def from_record(cls, rec: dict) -> "Owner":
        """The owner an applied.json names; records from before owners existed: the file's path."""
        owner = rec.get("owner")
        if isinstance(owner, dict) and isinstance(owner.get("file"), str):
            return cls(owner.get("source"), owner["file"])
        return cls(None, str(rec.get("source", "")))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Owner) and (self.source, self.file) == (other.source, other.file)

    def __repr__(self) -> str:
        return f"Owner({self.id!r})"


def normalize_url(url: str, base: Path | None = None) -> str:
    """One spelling per repository: no scheme, user, default port, trailing `/` or `.git`; the host
    in lower case. A local remote (a path or file://) is its real absolute path."""
    url = url.strip()
    m = _URL.match(url)
    if m and m["scheme"].lower() != "file":
        host = m["host"].lower()
        port = m["port"] if m["port"] and m["port"] != _DEFAULT_PORTS.get(m["scheme"].lower()) else None
        return _trim(f"{host}:{port}" if port else host, m["path"] or "")
    m = _SCP_LIKE.match(url) if not url.startswith(("/", ".", "file:")) else None
    if m:
        return _trim(m["host"].lower(), "/" + m["path"])
    path = url[len("file://"):] if url.startswith("file://") else url
    if not os.path.isabs(path) and base is not None:
        path = str(base / path)
    return _trim("", os.path.realpath(path))


def _trim(host: str, path: str) -> str:
    path = re.sub(r"/+", "/", path).rstrip("/")
    path = path[:-4] if path.endswith(".git") else path
    return host + path


def repo_root(path: Path) -> Path | None:
    """The working tree that holds `path` (a directory with a `.git` entry), else None."""
    p = path if path.is_dir() else path.parent
    for d in (p, *p.parents):
        if (d / ".git").exists():
            return d
    return None


def git(root: Path, *args: str, timeout: float = 10.0) -> str | None:
    """`git -C root ARGS` stdout stripped, None when git fails or is missing."""
    import subprocess          # here: `volt status` reads owners, never runs git (~5 ms an import)
    try:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


class Resolver:
    """Owners of spec files, with each repository's remote and commit read once per command."""

    def __init__(self, source_name: str | None = None) -> None:
        self.source_name = source_name
        self._repos: dict[Path | None, tuple[str | None, str | None]] = {}

    def repo(self, path: Path) -> tuple[Path | None, str | None]:
        """(repository root, `git:<normalized origin>`) for a path; (None, None) outside git or
        without an origin remote."""
        root = repo_root(path)
        if root is None:
            return None, None
        if root not in self._repos:
            url = git(root, "config", "--get", "remote.origin.url")
            self._repos[root] = ("git:" + normalize_url(url, root) if url else None,
                                 git(root, "rev-parse", "--verify", "-q", "HEAD"))
        return root, self._repos[root][0]

    def commit(self, path: Path) -> str | None:
        """The commit checked out in the repository that holds `path` (None outside git)."""
        root, _ = self.repo(path)
        return self._repos[root][1] if root is not None else None

    def owner(self, file: str) -> Owner:
        if os.path.basename(file) == "<stdin>":        # schema.loader.STDIN_NAME: no file, no repository
            return Owner(self.source_name, "<stdin>")
        path = Path(os.path.abspath(file))
        root, source = self.repo(path)
        if self.source_name:
            rel = str(path.relative_to(root)) if root is not None and source else str(path)
            return Owner(self.source_name, rel)
        if source and root is not None:
            return Owner(source, str(path.relative_to(root)))
        return Owner(None, str(path))

    def scope(self, applied_path: str, recursive: bool = False) -> "Scope":
        """What `--prune` may delete for one applied path: VMs owned under it, by the same source."""
        path = Path(os.path.abspath(applied_path))
        root, source = self.repo(path)
        if self.source_name:
            return Scope(self.source_name, None)
        if source and root is not None:
            rel = str(path.relative_to(root))
            return Scope(source, "" if rel == "." else rel, exact=path.is_file(), recursive=recursive)
        return Scope(None, str(path), exact=path.is_file(), recursive=recursive)


class Scope:
    """The owners one applied path covers: the same source, and a file equal to `prefix` (a file
    was applied) or directly inside it (a directory: its *.yaml are read, not its subdirectories,
    unless `recursive`; "" is the repository's root); prefix None: all the source owns
    (`--source NAME`)."""

    __slots__ = ("source", "prefix", "exact", "recursive")

    def __init__(self, source: str | None, prefix: str | None, exact: bool = False, recursive: bool = False) -> None:
        self.source, self.prefix, self.exact, self.recursive = source, prefix, exact, recursive

    def covers(self, owner: Owner) -> bool:
        if owner.source != self.source:
            return False
        if self.prefix is None:
            return True
        if self.exact:
            return owner.file == self.prefix
        if self.recursive:
            return not self.prefix or owner.file.startswith(self.prefix.rstrip("/") + "/")
        return os.path.dirname(owner.file) == self.prefix
