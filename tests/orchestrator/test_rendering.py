"""Every prompt and notes.txt, rendered from one fixture journal, byte for byte as stored.

The stored copies in fixtures/golden/rendered/ were made before orchestrator/ was split into
wings; a change that alters a prompt on purpose regenerates them (`python -m
tests.orchestrator.test_rendering`) and shows the difference in its diff.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator import loop
from orchestrator.ideas import load_idea
from orchestrator.journal import Journal
from orchestrator.report import write_notes
from orchestrator.runner import RunResult
from orchestrator.templates import load_template
from orchestrator.validate import validate_run

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"
IDEAS = Path(__file__).resolve().parents[2] / "ideas"


def rendered(ws: Path) -> dict[str, str]:
    """Each prompt and notes.txt for the fixture workspace `ws`."""
    spec = load_template(ws)
    idea = load_idea("temporal_sae", IDEAS)
    settings = loop.Settings(max_runs=2)
    session = SimpleNamespace(
        ws=SimpleNamespace(root=ws),
        spec=spec,
        idea=idea,
        settings=settings,
        run_number=2,
        failures=1,
        run_name="run_2",
    )
    crash = RunResult(
        returncode=1,
        timed_out=False,
        seconds=1.0,
        stdout_tail="step 1\nstep 2\n",
        stderr_tail="Traceback\nValueError: bad shape\n",
        log_path=ws / "run_1" / "log.txt",
    )
    verdict = validate_run(ws / "run_1", spec)
    texts = {
        "opening.txt": loop._opening_prompt(session),
        "after_run.txt": loop._after_run_prompt(session, "run_1", verdict),
        "failure.txt": loop._failure_prompt(session, "run_1", "exit code 1", None, crash),
        "invalid.txt": loop._failure_prompt(session, "run_1", "INVALID result", verdict, crash),
        "no_change.txt": loop._render(
            "no_change.j2",
            editable=spec.editable_files,
            attempt=1,
            max_iters=4,
            run_name="run_2",
            end_marker="ALL_COMPLETED",
        ),
        "guard.txt": loop._render(
            "guard.j2",
            where="run_1 (the experiment itself)",
            changes="modified: run_0/x",
            editable=spec.editable_files,
            run_outputs=True,
        ),
    }
    journal = Journal(ws / "journal.jsonl")
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
