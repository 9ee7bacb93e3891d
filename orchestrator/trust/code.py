"""The version of the project's code that runs and measures experiments.

The journal records this digest at every start, and every verdict checks it again: a run judged
by code that changed under it is not a measurement of a known lab.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import git

PROJECT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("orchestrator", "saelab")  # the project code that runs and measures experiments


def code_digest(project: Path) -> str:
    """One digest of the project's code as it is on disk (CODE_DIRS' Python files)."""
    digest = hashlib.sha256()
    for folder in CODE_DIRS:
        for path in sorted((Path(project) / folder).rglob("*.py")):
            digest.update(path.relative_to(project).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def dirty_code(project: Path) -> list[str]:
    """Uncommitted changes to CODE_DIRS (empty outside a git checkout: nothing to compare)."""
    try:
        repo = git.Repo(project)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return []
    status = repo.git.status("--porcelain", "--untracked-files=all", "--", *CODE_DIRS)
    return [line[3:] for line in status.splitlines() if not line.endswith(".pyc")]
