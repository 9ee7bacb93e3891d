"""Hostile experiments against the unsandboxed orchestrator's own writes (issue 19, items 1 and
4's disk half): links and FIFOs planted where it writes, a run over its disk cap, a workspace
over its cap.

Each loop test hands the real loop (real aider over the scripted server, the tiny template) one
edit that plants something, then checks: the run is INVALID (or stopped) with a one-line
reason, the files the links point at are unchanged byte for byte, every journal line parses,
and nothing printed a traceback.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from orchestrator.templates import TemplateError, load_template
from orchestrator.trust import disk, referee, runner
from tests.orchestrator.helpers import TEMPLATES
from tests.orchestrator.trust.test_sandbox import (
    EXPERIMENT,
    _copy_tiny,
    attack,
    entries,
    needs_sandbox,
    outcome,
)

RUN_FILES = ("referee.json", "referee_log.txt", "dashboards.json", "referee_items.json")
SECRET = b"[default]\naws_secret_access_key = not-a-real-key\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file of the user's, outside the workspace."""
    path = tmp_path / "home" / ".aws" / "credentials"
    path.parent.mkdir(parents=True)
    path.write_bytes(SECRET)
    return path


def tiny(tmp_path: Path, **fields: object) -> Path:
    """A copy of the tiny template with `fields` set in template.json; returns its parent."""
    raw = json.loads((TEMPLATES / "tiny" / "template.json").read_text())
    raw.update(fields)
    _copy_tiny(tmp_path / "templates" / "tiny", raw)
    return tmp_path / "templates"


def assert_intact(ws: Path, outside: Path, output: str) -> None:
    """The user's file and the journal as they were; no traceback on the console."""
    assert outside.read_bytes() == SECRET
    lines = (ws / "journal.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # every line parses
    assert entries(ws, "start") and entries(ws, "end")
    assert "Traceback" not in output


@needs_sandbox
def test_links_planted_at_every_run_file_name_are_invalid_and_never_followed(
    run_loop, reply, outside, capfd
):
    journal_link = "os.symlink('../journal.jsonl', out_dir / 'referee.json')"
    others = "; ".join(f"os.symlink({str(outside)!r}, out_dir / {n!r})" for n in RUN_FILES[1:])
    ws, _ = run_loop(
        [attack(reply, f"import os; {journal_link}; {others}")], max_runs=1, max_iters=1
    )
    status, feedback = outcome(ws)
    assert status == "invalid"
    problems = entries(ws, "verdict")[0]["problems"]
    for name in RUN_FILES:
        assert any(
            p.startswith(f"run_1/{name} is a symlink planted by the experiment") for p in problems
        )
    assert all("\n" not in p for p in problems)
    assert "run_1/referee.json is a symlink planted by the experiment" in feedback
    assert_intact(ws, outside, capfd.readouterr().out)


@needs_sandbox
def test_a_fifo_at_a_run_file_name_does_not_hang_the_loop(run_loop, reply, outside, capfd):
    code = (
        "import os; os.mkfifo(out_dir / 'referee_log.txt'); os.mkfifo(out_dir / 'dashboards.json')"
    )
    ws, _ = run_loop([attack(reply, code)], max_runs=1, max_iters=1)
    assert outcome(ws)[0] == "invalid"
    problems = entries(ws, "verdict")[0]["problems"]
    assert any(p.startswith("run_1/referee_log.txt is a FIFO planted") for p in problems)
    assert_intact(ws, outside, capfd.readouterr().out)


@needs_sandbox
def test_links_planted_in_plots_are_not_written_through(run_loop, reply, outside, tmp_path, capfd):
    """The plot command (agent code, it may write plots/) plants links at the names of the
    built-in plots and draws nothing, so the orchestrator falls back to drawing them."""
    plant = (
        "import os; os.symlink('../journal.jsonl', 'plots/key_metrics.png'); "
        f"os.symlink({str(outside)!r}, 'plots/loss_curves.png')"
    )
    templates = tiny(tmp_path, plot_command=["{python}", "-c", plant])
    ws, _ = run_loop([attack(reply, "pass")], max_runs=1, max_iters=1, templates_dir=templates)
    assert outcome(ws)[0] == "ok"
    assert (ws / "plots" / "key_metrics.png").is_symlink()  # left alone, not drawn through
    assert_intact(ws, outside, capfd.readouterr().out)
    assert 'src="plots/loss_curves.png"' not in (ws / "report.html").read_text()


def test_the_referee_step_refuses_a_link_at_its_output_names(tmp_path, outside):
    """Even past the judge's check, the copy of the referee's JSON follows no link."""
    ws = tmp_path / "ws"
    (ws / "run_1").mkdir(parents=True)
    (ws / "referee.py").write_bytes((TEMPLATES / "tiny" / "referee.py").read_bytes())
    (ws / "run_1" / "w.npy").write_bytes((TEMPLATES / "tiny" / "run_0" / "w.npy").read_bytes())
    (ws / "journal.jsonl").write_text('{"kind": "start"}\n')
    (ws / "run_1" / "referee.json").symlink_to("../journal.jsonl")
    spec = load_template(TEMPLATES / "tiny")
    problems = referee.measure(ws, spec, "run_1", {}, live=False)
    assert problems == [
        "the referee's records were not written: run_1/referee.json is a symlink; not followed"
    ]
    assert (ws / "journal.jsonl").read_text() == '{"kind": "start"}\n'


def test_a_resume_does_not_read_a_planted_pid_file(tmp_path, outside):
    run_dir = tmp_path / "run_1"
    run_dir.mkdir()
    (run_dir / runner.PID_FILE).symlink_to(outside)
    assert runner._fresh_run_dir(tmp_path, "run_1") == run_dir
    assert list(run_dir.iterdir()) == [] and outside.read_bytes() == SECRET


def test_an_over_cap_run_keeps_its_log_and_loses_its_big_files(run_loop, reply, tmp_path, capfd):
    templates = tiny(tmp_path, sandbox={"max_run_bytes": 2_000_000})
    code = "open(out_dir / 'big.bin', 'wb').write(bytes(5_000_000))"
    ws, _ = run_loop([attack(reply, code)], max_runs=1, max_iters=1, templates_dir=templates)
    status, feedback = outcome(ws)
    assert status == "crashed"
    assert "killed: run dir over its cap of 1.9 MiB; removed run_1/big.bin (1.9 MiB)" in feedback
    assert not (ws / "run_1" / "big.bin").exists()
    assert "File too large" in (ws / "run_1" / "log.txt").read_text()
    assert "Traceback" not in capfd.readouterr().out


def test_a_workspace_over_its_cap_stops_the_loop(run_loop, reply, tmp_path, capfd):
    templates = tiny(tmp_path, sandbox={"max_workspace_bytes": 3_000_000})
    first = attack(reply, "open(out_dir / 'big.bin', 'wb').write(bytes(4_000_000))")
    steps = next(x for x in EXPERIMENT.read_text().splitlines() if x.startswith("steps = "))
    second = reply("Train longer.", ("experiment.py", steps, steps.replace("200", "300")))
    ws, _ = run_loop([first, second], max_runs=2, max_iters=1, templates_dir=templates)
    assert [(e["run_name"], e["status"]) for e in entries(ws, "run_done")] == [("run_1", "ok")]
    (halt,) = entries(ws, "halt")
    assert halt["error"] == "WorkspaceFull" and "\n" not in halt["reason"]
    assert re.match(r"the workspace holds [\d.]+ MiB, past its cap of 2.9 MiB", halt["reason"])
    out = capfd.readouterr().out
    assert "stopped:" in out and "Traceback" not in out
    assert all(json.loads(line) for line in (ws / "journal.jsonl").read_text().splitlines())


def test_after_kill_removes_the_largest_files_first_and_says_which(tmp_path):
    run_dir = tmp_path / "run_3"
    run_dir.mkdir()
    (run_dir / "log.txt").write_bytes(bytes(300))
    (run_dir / "small.json").write_bytes(bytes(100))
    (run_dir / "a.bin").write_bytes(bytes(3000))
    (run_dir / "b.bin").write_bytes(bytes(2000))
    os.symlink("/etc/passwd", run_dir / "link")  # counted as a link (11 bytes), never followed
    note = disk.after_kill(run_dir, cap=2048, keep="log.txt")
    assert note.startswith("killed: run dir over its cap of 2.0 KiB; removed run_3/a.bin (2.9 KiB)")
    assert sorted(p.name for p in run_dir.iterdir()) == ["link", "log.txt", "small.json"]
    assert Path("/etc/passwd").is_file()


@pytest.mark.parametrize("field", ["max_run_bytes", "max_workspace_bytes"])
def test_a_bad_disk_cap_is_a_one_line_template_error(tmp_path, field):
    templates = tiny(tmp_path, sandbox={field: -1})
    with pytest.raises(TemplateError, match=rf"'sandbox.{field}' must be a positive number"):
        load_template(templates / "tiny")
