"""trust/judge.py: the referee's and validation's problems, a tampered run and changed code each
make the verdict INVALID with their own line; the journal record keeps what was judged."""

from __future__ import annotations

from pathlib import Path

from orchestrator.trust.code import PROJECT, code_digest
from orchestrator.trust.judge import judge, judged_artifacts, record
from tests.orchestrator.helpers import core_result, core_spec, core_write_run


def _judge(tmp_path: Path, result: dict, **overrides: str):
    spec = core_spec(tmp_path / "template")
    ws = tmp_path / "ws"
    core_write_run(ws, "run_1", result)
    given = {"tampered": "", "code": code_digest(PROJECT)} | overrides
    return ws, spec, judge(ws, spec, "run_1", earlier={}, live=False, **given)


def test_a_clean_valid_run_is_valid_and_its_record_keeps_numbers_and_digests(tmp_path):
    ws, spec, verdict = _judge(tmp_path, core_result())
    assert verdict.ok and verdict.problems == []
    fields = record(ws, spec, "run_1", verdict)
    assert fields["metrics"]["score"] == 0.8731 and fields["ok"]
    assert list(fields["files"]) == ["final_info.json"] and fields["artifact"] is None
    assert fields["referee_seconds"] is None  # no referee, no measurement time


def test_a_run_that_changed_protected_files_is_invalid(tmp_path):
    _, _, verdict = _judge(tmp_path, core_result(), tampered="modified: template.json")
    assert not verdict.ok
    assert verdict.problems == ["the run changed protected files (modified: template.json)"]


def test_a_run_judged_by_changed_code_is_invalid(tmp_path):
    _, _, verdict = _judge(tmp_path, core_result(), code="0" * 16)
    assert not verdict.ok and "code (orchestrator/, saelab/) changed" in verdict.problems[0]


def test_validation_problems_and_guard_problems_add_up(tmp_path):
    _, _, verdict = _judge(tmp_path, core_result(training_steps=0), tampered="added: x.py")
    assert not verdict.ok and len(verdict.problems) == 2


def test_judged_artifacts_are_the_valid_verdicts_digests(tmp_path):
    spec = core_spec(tmp_path / "template")  # no referee: no baseline digest to read
    valid = [{"run_name": "run_1", "artifact": "aa"}, {"run_name": "run_2", "artifact": None}]
    assert judged_artifacts(tmp_path, spec, valid) == {"run_1": "aa"}
