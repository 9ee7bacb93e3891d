"""Every idea's playbook, the reference trajectory replayed when no LLM is configured, applies
cleanly to the template's experiment.py with aider's own SEARCH/REPLACE parser, and the edited
experiment trains and passes template.json's rules at the tiny budget (lab interpreter)."""

from __future__ import annotations

import json
import py_compile
import shutil
import subprocess
from pathlib import Path

import pytest
from aider.coders.editblock_coder import DEFAULT_FENCE, do_replace, find_original_update_blocks

from orchestrator.envs import lab_python
from orchestrator.ideas import available, load_idea, load_playbook, playbook_path
from orchestrator.prompts import SUMMARY_CHARS, commit_message
from orchestrator.templates import load_template
from orchestrator.trust.validate import validate_run
from tests.orchestrator.helpers import REPO

TEMPLATE = REPO / "templates" / "temporal_sae"
IDEAS = available()
EDITED = "experiment.py"


def apply_response(workdir: Path, response: str) -> int:
    """Apply one assistant message's blocks the way aider's diff coder does; count them.

    Stricter than aider: every SEARCH text must occur verbatim, so no fuzzy match hides drift
    between the playbook and the template.
    """
    blocks = list(find_original_update_blocks(response, DEFAULT_FENCE, [EDITED]))
    for fname, search, replace in blocks:
        assert fname == EDITED, f"a block edits {fname!r}; playbooks edit {EDITED} only"
        path = workdir / fname
        content = path.read_text()
        assert search in content, f"SEARCH text not found verbatim in {fname}:\n{search}"
        assert content.count(search) == 1, f"SEARCH text is ambiguous in {fname}:\n{search}"
        path.write_text(do_replace(path, content, search, replace, DEFAULT_FENCE))
    return len(blocks)


def edited_template(idea: str, workdir: Path) -> Path:
    """A copy of the template with every turn of the idea's playbook applied."""
    shutil.copytree(TEMPLATE, workdir, ignore=shutil.ignore_patterns("run_*", "__pycache__"))
    for response in load_playbook(playbook_path(idea)).responses:
        apply_response(workdir, response)
    return workdir


def test_there_are_three_ideas_each_with_a_playbook():
    assert set(IDEAS) >= {"temporal_sae", "temporal_consistency_sae", "adaptive_orthogonal_sae"}
    for idea in IDEAS:
        assert load_idea(idea).template == "temporal_sae"
        assert playbook_path(idea).is_file(), f"{idea} has no playbook"


@pytest.mark.parametrize("idea", IDEAS)
def test_playbook_turns_apply_in_order_and_compile(idea, tmp_path):
    responses = load_playbook(playbook_path(idea)).responses
    assert 3 <= len(responses) <= 5
    assert "ALL_COMPLETED" in responses[-1]
    shutil.copy(TEMPLATE / EDITED, tmp_path / EDITED)
    for turn, response in enumerate(responses[:-1], start=1):
        assert apply_response(tmp_path, response) >= 1, f"turn {turn} edits nothing"
        py_compile.compile(str(tmp_path / EDITED), doraise=True)
    assert apply_response(tmp_path, responses[-1]) == 0
    raw = json.loads(playbook_path(idea).read_text())
    assert raw["idea"] == idea and raw["template"] == "temporal_sae"


@pytest.mark.parametrize("idea", IDEAS)
def test_every_edit_reply_opens_with_a_one_line_summary_that_becomes_the_subject(idea):
    for turn, response in enumerate(load_playbook(playbook_path(idea)).responses, start=1):
        if not list(find_original_update_blocks(response, DEFAULT_FENCE, [EDITED])):
            continue  # the last word: nothing is committed
        summary, blank = response.splitlines()[:2]
        assert blank == "" and 0 < len(summary) <= SUMMARY_CHARS, (turn, summary)
        assert commit_message(f"run_{turn}", 0, response) == f"run_{turn}: {summary}"


@pytest.mark.parametrize("idea", IDEAS)
def test_edited_experiment_trains_and_validates(idea, tmp_path):
    workdir = edited_template(idea, tmp_path / "ws")
    command = [lab_python(), EDITED, "--out_dir=run_1", "--budget=tiny"]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    referee = [lab_python(), "-m", "saelab.referee", "run_1", "--profile", "tiny"]
    referee += ["--out", "run_1/referee.json"]  # the lab measures the tiny run at tiny sizes
    done = subprocess.run(referee, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    verdict = validate_run(workdir / "run_1", load_template(TEMPLATE))
    assert verdict.ok, verdict.summary()
    info = json.loads((workdir / "run_1" / "final_info.json").read_text())
    assert info["architecture"] != "batchtopk", "the playbook's architecture did not take effect"
    if idea == "temporal_consistency_sae":  # its last run trains a twin from a second seed
        measured = json.loads((workdir / "run_1" / "referee.json").read_text())
        stability = measured["temporal"]["eval_result_metrics"]["temporal"]["feature_stability"]
        assert 0 < stability < 0.99, stability  # 1.0: the twin would be the same SAE
