"""Where `volt agent` gets its specs: a directory, a checkout pulled in place, or a URL cloned into
the agent's cache. The git CLI does the work (Debian's git; nothing on the VMM's path)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

from .owner import git, repo_root

_REMOTE = re.compile(r"^([a-z][a-z0-9+.-]*://|[^@/\s]+@[^:/\s]+:)", re.IGNORECASE)
GIT_TIMEOUT_S = 120.0
_BRANCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}")


class SourceError(RuntimeError):
    """A pull or clone failed: the one-line reason (git's first fatal: or error: line)."""


def is_remote(target: str) -> bool:
    """A URL (scheme:// or git@host:path) rather than a path on this machine."""
    return bool(_REMOTE.match(target)) and not os.path.exists(target)


class Source:
    """The specs an agent applies: `path` (the checkout's `subdir`), refreshed by pull()."""

    def __init__(self, target: str, cache: Path, branch: str | None = None, subdir: str = "") -> None:
        if subdir and (os.path.isabs(subdir) or ".." in Path(subdir).parts):
            raise SourceError(f"--path {subdir!r} must be a relative path inside the repository")
        if branch is not None and not _BRANCH.fullmatch(branch):      # git reads a leading - as an option
            raise SourceError(f"--branch {branch!r} is not a branch name (letters, digits, '.', '_', '/', '-'; "
                              "not starting with '-' or '.')")
        self.target, self.branch, self.subdir = target, branch, subdir
        self.remote = is_remote(target)
        key = hashlib.sha256(target.encode()).hexdigest()[:16]
        self.checkout = cache / key if self.remote else Path(os.path.abspath(target))
        self.path = self.checkout / subdir if subdir else self.checkout

    def pull(self) -> str | None:
        """Bring the checkout up to date; the commit it is at (None outside git). SourceError when
        the remote could not be reached or the checkout cannot move forward."""
        if self.remote:
            self._fetch_clone()
        else:
            root = repo_root(self.checkout)
            if root is not None and git(root, "config", "--get", "remote.origin.url"):
                branch = [self.branch] if self.branch else []
                _run(["git", "-C", str(root), "pull", "--ff-only", "--quiet", "origin", *branch])
        return self.commit()

    def commit(self) -> str | None:
        """The commit the checkout is at now (None outside git): what a sync applies."""
        root = repo_root(self.checkout)
        return git(root, "rev-parse", "HEAD") if root is not None else None

    def _fetch_clone(self) -> None:
        if not (self.checkout / ".git").exists():
            self.checkout.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.checkout.with_name(self.checkout.name + ".tmp")
            _run(["rm", "-rf", str(tmp)])
            branch = ["--branch", self.branch] if self.branch else []
            _run(["git", "clone", "--quiet", *branch, "--", self.target, str(tmp)])
            os.replace(tmp, self.checkout)           # a half-done clone is never taken for one
            return
        ref = self.branch or "HEAD"
        _run(["git", "-C", str(self.checkout), "fetch", "--quiet", "origin", ref])
        _run(["git", "-C", str(self.checkout), "checkout", "--quiet", "--force", "--detach", "FETCH_HEAD"])

    def describe(self) -> str:
        where = self.target + (f"@{self.branch}" if self.branch else "")
        return where + (f" ({self.subdir})" if self.subdir else "")


def _run(cmd: list[str]) -> None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL,
                           env=dict(os.environ, GIT_TERMINAL_PROMPT="0"))
    except FileNotFoundError:
        raise SourceError(f"{cmd[0]} is not installed (apt-get install {cmd[0]})") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"{' '.join(cmd[:3])} did not finish within {GIT_TIMEOUT_S:g} s") from None
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]     # git's own reason, not its advice
        raise SourceError((fatal or lines or [f"{' '.join(cmd[:3])} exited with status {r.returncode}"])[0])
