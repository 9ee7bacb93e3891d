"""A run's workspace: `results/<UTC stamp>_<idea>/`, a git repository of every agent edit.

The first commit is the pristine template. Everything outside the template's editable files is
protected: its sha256 is recorded in a manifest, and after every agent turn and every run the
orchestrator compares, restores what changed from the pristine commit, and deletes what was
added. The manifest lives in `.git/scientist/`: aider only sees the files in its chat, git never
tracks its own directory (so the manifest is not itself a protected file that shows up in
diffs), and it travels with the workspace for --resume.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import git

MANIFEST = Path(".git") / "scientist" / "manifest.json"
JOURNAL = "journal.jsonl"
# Outputs the orchestrator itself writes; never counted as "added" by the agent.
RUN_DIR = re.compile(r"run_\d+(_seed\d+)?$")  # run_2_seed1: a confirmation seed
IGNORED_PARTS = {".git", "__pycache__", ".pytest_cache", ".scratch"}
IGNORED_NAMES = {JOURNAL}
IGNORED_PREFIXES = (".aider",)
EXCLUDE = ["run_*/", JOURNAL, "__pycache__/", ".aider*", "*.png", ".scratch/"]  # .git/info/exclude
AUTHOR = git.Actor("sae-scientist", "sae-scientist@localhost")
IDENTITY = {  # who writes notes and tags: no user.name / user.email need be configured
    "GIT_COMMITTER_NAME": AUTHOR.name,
    "GIT_COMMITTER_EMAIL": AUTHOR.email,
    "GIT_AUTHOR_NAME": AUTHOR.name,
    "GIT_AUTHOR_EMAIL": AUTHOR.email,
}


class WorkspaceError(RuntimeError):
    """The workspace cannot be created or opened; the message says why and what to do."""


@dataclass
class Changes:
    """Protected-file differences from the pristine template (paths relative to the root)."""

    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changed or self.added or self.deleted)

    def files(self) -> list[str]:
        return sorted(self.changed + self.added + self.deleted)

    def describe(self) -> str:
        parts = [f"{what}: {', '.join(paths)}" for what, paths in self._groups() if paths]
        return "; ".join(parts)

    def _groups(self) -> list[tuple[str, list[str]]]:
        return [("changed", self.changed), ("added", self.added), ("deleted", self.deleted)]


@dataclass(frozen=True)
class Commit:
    sha: str
    message: str
    files: list[str]


class Workspace:
    """A workspace directory; create one with `Workspace.create`, reopen with `Workspace.open`."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        manifest_path = self.root / MANIFEST
        if not manifest_path.is_file():
            raise WorkspaceError(
                f"{self.root} is not a workspace (no {MANIFEST}); pass a results/<...> dir"
            )
        manifest = json.loads(manifest_path.read_text())
        self.pristine: str = manifest["pristine"]
        self.editable: list[str] = manifest["editable"]
        self.protected: dict[str, str] = manifest["protected"]  # path -> sha256
        self.repo = git.Repo(self.root)

    @classmethod
    def create(
        cls, template_dir: Path, idea: str, results_dir: Path, editable: list[str]
    ) -> Workspace:
        """Copy the template to results_dir/<UTC stamp>_<idea>/ and commit it pristine."""
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
        root = Path(results_dir).resolve() / f"{stamp}_{idea}"
        for n in range(2, 100):  # two launches within one second get _2, _3, ...
            if not root.exists():
                break
            root = root.with_name(f"{stamp}_{idea}_{n}")
        shutil.copytree(template_dir, root, ignore=shutil.ignore_patterns(*IGNORED_PARTS))
        missing = [f for f in editable if not (root / f).is_file()]
        if missing:
            raise WorkspaceError(f"template {template_dir} lacks its editable files {missing}")
        repo = git.Repo.init(root)
        (root / ".git" / "info").mkdir(exist_ok=True)
        (root / ".git" / "info" / "exclude").write_text("\n".join(EXCLUDE) + "\n")
        files = _tree_files(root, skip_runs=False)  # the template's baseline run is protected
        repo.index.add(files)
        sha = repo.index.commit(
            f"template: pristine {Path(template_dir).name}", author=AUTHOR, committer=AUTHOR
        ).hexsha
        protected = {f: _sha256(root / f) for f in files if f not in editable}
        manifest = {"pristine": sha, "editable": list(editable), "protected": protected}
        (root / MANIFEST).parent.mkdir(parents=True, exist_ok=True)
        (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        return cls(root)

    @classmethod
    def open(cls, root: Path) -> Workspace:
        return cls(root)

    @property
    def journal_path(self) -> Path:
        return self.root / JOURNAL

    def check_protected(self) -> Changes:
        """Protected files changed, added or deleted since the pristine commit."""
        changes = Changes()
        for path, digest in sorted(self.protected.items()):
            full = self.root / path
            if not full.is_file():
                changes.deleted.append(path)
            elif _sha256(full) != digest:
                changes.changed.append(path)
        known = set(self.protected) | set(self.editable)
        changes.added = [f for f in _tree_files(self.root) if f not in known]
        return changes

    def revert(self, changes: Changes) -> None:
        """Restore changed/deleted protected files from the pristine commit; delete added ones."""
        restore = changes.changed + changes.deleted
        if restore:
            self.repo.git.checkout(self.pristine, "--", *restore)
        for path in changes.added:
            (self.root / path).unlink(missing_ok=True)

    def commit(self, message: str) -> Commit | None:
        """Commit the editable files if they differ from HEAD; None for an empty diff."""
        dirty = self.repo.git.status("--porcelain", "--", *self.editable)
        if not dirty.strip():
            return None
        present = [f for f in self.editable if (self.root / f).exists()]
        gone = [f for f in self.editable if f not in present and _tracked(self.repo, f)]
        if present:
            self.repo.index.add(present)
        if gone:
            self.repo.index.remove(gone)
        files = [line[3:] for line in dirty.splitlines()]
        sha = self.repo.index.commit(message, author=AUTHOR, committer=AUTHOR).hexsha
        return Commit(sha, message, files)

    def line_counts(self, sha: str) -> dict[str, list[int]]:
        """Lines added and deleted per file by commit `sha` (git's --numstat)."""
        files = self.repo.commit(sha).stats.files
        return {path: [int(n["insertions"]), int(n["deletions"])] for path, n in files.items()}

    def annotate(self, sha: str, note: str, tag: str | None = None) -> None:
        """Attach `note` to commit `sha` as its git note and, with `tag`, as the message of an
        annotated tag of that name, so `git log --decorate` reads change -> result. Both are
        replaced when they exist: the journal is the record, these are rebuilt from it."""
        self.repo.git.notes("add", "-f", "-m", note, sha, env=IDENTITY)
        if tag:
            self.repo.git.tag("-a", "-f", "-m", note, tag, sha, env=IDENTITY)

    def reset_editable(self) -> None:
        """Put the editable files back to the last commit (a half-applied interrupted turn)."""
        self.repo.git.checkout("HEAD", "--", *self.editable)

    def checkout_editable(self, commit: str) -> None:
        """Put the editable files as they were at `commit` (those it had) into the tree."""
        present = self.repo.git.ls_tree("--name-only", commit, "--", *self.editable).split()
        if present:
            self.repo.git.checkout(commit, "--", *present)

    def patches(self) -> list[str]:
        """The diff of every commit after the pristine one, oldest first (for replay checks)."""
        shas = self.repo.git.rev_list("--reverse", f"{self.pristine}..HEAD").split()
        return [self.repo.git.show(sha, "--format=%s", "--patch") for sha in shas]


def _tree_files(root: Path, skip_runs: bool = True) -> list[str]:
    """Files under root, relative, minus git internals, caches and (skip_runs) run outputs."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or _ignored(rel, skip_runs):
            continue
        found.append(rel.as_posix())
    return found


def _ignored(rel: Path, skip_runs: bool) -> bool:
    if IGNORED_PARTS & set(rel.parts) or rel.name in IGNORED_NAMES:
        return True
    if rel.parts[0].startswith(IGNORED_PREFIXES):
        return True
    # run outputs are the runner's; the baseline's files are in the manifest, checked by hash
    return skip_runs and len(rel.parts) > 1 and bool(RUN_DIR.match(rel.parts[0]))


def _tracked(repo: git.Repo, path: str) -> bool:
    return bool(repo.git.ls_files("--", path).strip())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
