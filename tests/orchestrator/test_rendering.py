"""Every prompt and notes.txt, rendered from one fixture journal, byte for byte as stored.

The stored copies in fixtures/golden/rendered/ were made before orchestrator/ was split into
wings; a change that alters a prompt on purpose regenerates them (`python -m
tests.orchestrator.test_rendering`) and shows the difference in its diff.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from orchestrator import prompts
from orchestrator.ideas import load_idea
from orchestrator.journal import Journal
from orchestrator.report import findings
from orchestrator.report.notes import write_notes
from orchestrator.templates import load_template
from orchestrator.trust.runner import RunResult
from orchestrator.trust.validate import validate_run
from tests.orchestrator.helpers import FIXTURES, REPO

GOLDEN = FIXTURES / "golden"
IDEAS = REPO / "ideas"


def rendered(ws: Path) -> dict[str, str]:
    """Each prompt and notes.txt for the fixture workspace `ws`."""
    spec = load_template(ws)
    idea = load_idea("temporal_sae", IDEAS)
    crash = RunResult(
        returncode=1,
        timed_out=False,
        seconds=1.0,
        stdout_tail="step 1\nstep 2\n",
        stderr_tail="Traceback\nValueError: bad shape\n",
        log_path=ws / "run_1" / "log.txt",
    )
    verdict = validate_run(ws / "run_1", spec)
    journal = Journal(ws / "journal.jsonl")
    standing = findings.standing(ws, spec, journal, idea.hypotheses)
    texts = {
        "opening.txt": prompts.opening(ws, spec, idea, 2, 4, spec.timeout_seconds),
        "after_run.txt": prompts.after_run(ws, spec, "run_1", verdict, "run_2", 1, standing),
        "failure.txt": prompts.failure(spec, "run_1", 1, 4, "exit code 1", None, crash),
        "invalid.txt": prompts.failure(spec, "run_1", 1, 4, "INVALID result", verdict, crash),
        "no_change.txt": prompts.no_change(spec, "run_2", 1, 4),
        "guard.txt": prompts.guard(
            spec, "run_1 (the experiment itself)", "modified: run_0/x", True
        ),
    }
    texts["notes.txt"] = write_notes(ws, spec, journal, idea.raw, "REPLAY banner").read_text()
    return texts


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return Path(shutil.copytree(GOLDEN / "workspace", tmp_path / "ws"))


def test_prompts_and_notes_are_byte_identical_to_the_stored_copies(workspace: Path) -> None:
    for name, text in rendered(workspace).items():
        assert text == (GOLDEN / "rendered" / name).read_text(), name


if __name__ == "__main__":  # regenerate the stored copies after an intended change
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(shutil.copytree(GOLDEN / "workspace", Path(tmp) / "ws"))
        (GOLDEN / "rendered").mkdir(exist_ok=True)
        for name, text in rendered(ws).items():
            (GOLDEN / "rendered" / name).write_text(text)
    sys.exit(0)
