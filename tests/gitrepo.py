"""Real git repositories for tests: an upstream (bare), clones of it, commits and pushes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_ENV = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
            GIT_COMMITTER_EMAIL="t@example.com", GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null")


def git(cwd: Path, *args: str) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, env=_ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"git {' '.join(args)}: {r.stderr}"
    return r.stdout.strip()


def upstream(path: Path) -> Path:
    """An empty bare repository whose default branch is main."""
    path.mkdir(parents=True)
    git(path, "init", "--quiet", "--bare", "--initial-branch=main")
    return path


def clone(url: str | Path, path: Path) -> Path:
    git(path.parent, "clone", "--quiet", str(url), str(path))
    git(path, "checkout", "--quiet", "-B", "main")
    return path


def commit_all(repo: Path, message: str, push: bool = True) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "--allow-empty", "-m", message)
    if push:
        git(repo, "push", "--quiet", "origin", "HEAD:main")
    return git(repo, "rev-parse", "HEAD")
