"""Workspace: pristine commit, protected-file manifest, revert, commits of editable files."""

from __future__ import annotations

import shutil

import pytest

from orchestrator.trust.workspace import MANIFEST, Workspace, WorkspaceError
from tests.orchestrator.helpers import TEMPLATES

TEMPLATE = TEMPLATES / "tiny"
EDITABLE = ["experiment.py", "notes.txt"]


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.create(TEMPLATE, "tiny_lr", tmp_path, EDITABLE)


def test_pristine_commit_and_manifest(ws):
    assert ws.root.name.endswith("_tiny_lr") and (ws.root / "run_0" / "final_info.json").is_file()
    head = ws.repo.head.commit
    assert head.hexsha == ws.pristine and head.message.startswith("template: pristine")
    baseline = {
        "run_0/final_info.json",
        "run_0/loss_curve.json",
        "run_0/referee.json",
        "run_0/w.npy",
    }
    assert set(ws.protected) == {"template.json", "referee.py", *baseline}
    assert not ws.check_protected()
    assert Workspace.open(ws.root).protected == ws.protected
    assert not ws.repo.is_dirty(untracked_files=True)  # the manifest lives inside .git


def test_changes_detected_and_reverted(ws):
    (ws.root / "template.json").write_text("{}")
    (ws.root / "run_0" / "final_info.json").unlink()
    (ws.root / "helper.py").write_text("x = 1\n")
    (ws.root / "run_3").mkdir()
    (ws.root / "run_3" / "final_info.json").write_text("{}")  # a run output: allowed
    (ws.root / "experiment.py").write_text("print('edited')\n")  # editable: allowed
    changes = ws.check_protected()
    assert (changes.changed, changes.deleted, changes.added) == (
        ["template.json"],
        ["run_0/final_info.json"],
        ["helper.py"],
    )
    ws.revert(changes)
    assert not ws.check_protected()
    assert not (ws.root / "helper.py").exists()
    assert (ws.root / "experiment.py").read_text() == "print('edited')\n"


def test_commit_only_editable_files_and_skip_empty_diff(ws):
    assert ws.commit("run_1: nothing") is None
    (ws.root / "notes.txt").write_text("new notes\n")
    commit = ws.commit("run_1: notes")
    assert commit and commit.files == ["notes.txt"] and ws.repo.head.commit.hexsha == commit.sha
    assert ws.commit("run_1: again") is None
    assert len(ws.patches()) == 1 and "+new notes" in ws.patches()[0]
    (ws.root / "experiment.py").write_text("broken")
    ws.reset_editable()
    assert (ws.root / "experiment.py").read_text() == (TEMPLATE / "experiment.py").read_text()


def test_errors_are_one_line(tmp_path):
    with pytest.raises(WorkspaceError, match="not a workspace"):
        Workspace.open(tmp_path)
    shutil.copytree(TEMPLATE, tmp_path / "t")
    with pytest.raises(WorkspaceError, match="lacks its editable files"):
        Workspace.create(tmp_path / "t", "x", tmp_path / "r", ["missing.py"])
    assert MANIFEST.parts[0] == ".git"


def test_a_commits_line_counts_and_its_note_and_tag(ws):
    (ws.root / "notes.txt").write_text("one\ntwo\n")
    sha = ws.commit("run_1: notes").sha
    assert ws.line_counts(sha) == {"notes.txt": [2, 1]}  # its one template line replaced
    ws.annotate(sha, "run_1 (attempt 1): CRASHED")
    ws.annotate(sha, "run_1 (attempt 1): VALID", tag="run_1")  # rebuilt: replaced, not stacked
    assert ws.repo.git.notes("show", sha) == "run_1 (attempt 1): VALID"
    assert ws.repo.tags["run_1"].commit.hexsha == sha
    assert not ws.check_protected() and not ws.repo.is_dirty()
