"""Where the project is: the root that params, tracking and outputs resolve against."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_MARKERS = ("dvc.yaml", "params.yaml")


def repo_root(start: str | Path | None = None) -> Path:
    """The nearest ancestor of ``start`` (default: the working directory) holding ``params.yaml``
    or ``dvc.yaml``; ``GPTST_ROOT`` overrides. Falls back to ``start`` itself."""
    env = os.environ.get("GPTST_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if any((candidate / marker).is_file() for marker in _MARKERS):
            return candidate
    return here


def git_commit(root: str | Path) -> str:
    """HEAD's commit (suffixed ``-dirty`` when tracked files changed), or ``unknown``."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit
