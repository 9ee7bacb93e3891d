"""Loop guards only a stopped, resumed or replayed loop shows: the baseline gate, a resume after
a run has passed, and a replay resumed half-way (the default path when no LLM is configured)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator import loop, session
from orchestrator.agent import coder
from orchestrator.trust.workspace import Workspace
from tests.orchestrator.helpers import IDEA, IDEAS, TEMPLATES, kinds, set_knob, statuses


def interrupt_turn(monkeypatch: pytest.MonkeyPatch, number: int) -> None:
    """Ctrl-C as agent turn `number` (1-based) begins, before its LLM call; later turns run."""
    real_turn, calls = coder.Agent.turn, []

    def turn(self: coder.Agent, message: str) -> str:
        calls.append(message)
        if len(calls) == number:
            monkeypatch.setattr(coder.Agent, "turn", real_turn)
            raise KeyboardInterrupt
        return real_turn(self, message)

    monkeypatch.setattr(coder.Agent, "turn", turn)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*")}


def two_edits(reply) -> list[str]:
    return [
        set_knob(reply, "More steps.", "steps", "300"),
        set_knob(reply, "Faster learning.", "learning_rate", "0.1"),
    ]


@pytest.mark.parametrize("damage", ["missing", "invalid"])
def test_a_bad_baseline_stops_the_loop_with_one_line_and_no_workspace(
    tmp_path, run_loop, reply, damage
):
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES / "tiny", templates / "tiny")
    result = templates / "tiny/run_0/final_info.json"
    if damage == "missing":
        result.unlink()
        problem = "run_0/final_info.json: missing"
    else:
        result.write_text(json.dumps({**json.loads(result.read_text()), "training_steps": 0}))
        problem = "training_steps = 0 violates 'training_steps > 0'"
    with pytest.raises(session.LoopError, match="is missing or invalid") as err:
        run_loop([reply("unused")], templates_dir=templates)
    assert problem in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_resume_after_a_passed_run_continues_at_the_next_run(
    run_loop, reply, monkeypatch, tmp_path
):
    interrupt_turn(monkeypatch, 2)  # run_1 has passed; Ctrl-C while asking for run_2
    with pytest.raises(KeyboardInterrupt):
        run_loop(two_edits(reply), max_runs=2)
    (ws,) = (tmp_path / "results").iterdir()
    assert statuses(ws) == [("run_1", "ok")]
    run_1 = snapshot(ws / "run_1")

    loop.run(session.Settings(resume=ws, live=False, allow_dirty_code=True))
    assert statuses(ws) == [("run_1", "ok"), ("run_2", "ok")]
    assert snapshot(ws / "run_1") == run_1  # not run again, not deleted
    run_2 = json.loads((ws / "run_2/final_info.json").read_text())
    assert (run_2["training_steps"], run_2["learning_rate"]) == (300, 0.1)


def test_a_resumed_replay_equals_an_uninterrupted_one(run_loop, reply, monkeypatch, tmp_path):
    ideas = tmp_path / "ideas"
    shutil.copytree(IDEAS, ideas)
    book = ideas / "playbooks" / f"{IDEA}.json"
    book.write_text(json.dumps({**json.loads(book.read_text()), "responses": two_edits(reply)}))
    offline = {"model": None, "api_base": None, "ideas_dir": ideas, "max_runs": 2}
    whole, _ = run_loop([], **offline)

    interrupt_turn(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_loop([], **offline)
    (cut,) = [ws for ws in (tmp_path / "results").iterdir() if ws != whole]
    loop.run(session.Settings(resume=cut, live=False, allow_dirty_code=True))

    assert Workspace.open(cut).patches() == Workspace.open(whole).patches()
    assert len(Workspace.open(whole).patches()) == 2
    served = [[e["response"] for e in kinds(ws, "llm_call")] for ws in (cut, whole)]
    assert served[0] == served[1]  # the same replies, in the same order, none served twice
    assert statuses(cut) == statuses(whole) == [("run_1", "ok"), ("run_2", "ok")]
