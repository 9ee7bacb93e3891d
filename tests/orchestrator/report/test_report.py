"""The report wing: notes.txt numbers come from final_info.json, false success claims are flagged,
plots fall back to built-ins, and the closing table shows every run."""

import json
import math
import re

import pytest
from rich.console import Console

from orchestrator.journal import Journal
from orchestrator.report.closing import runs_table
from orchestrator.report.noise import Band, compared, difference, load_bands, write_noise
from orchestrator.report.notes import AGENT_NOTES_HEADING, GENERATED_MARK, write_notes
from orchestrator.report.plots import effect_sizes, make_plots
from orchestrator.report.records import claims_success, collect_runs, without_edit_blocks
from orchestrator.report.story import run_note
from orchestrator.trust import sandbox
from orchestrator.trust.safefs import file_digests
from tests.orchestrator.helpers import core_result, core_spec, core_write_run

IDEA = {"Name": "toy", "Title": "Toy idea", "Experiment": "Train the toy model longer."}
CLAIM = "The run succeeded and the score improved to 0.99, a great result."


@pytest.fixture
def workspace(tmp_path):
    """Baseline, a valid run_1, and run_2 whose retry replaced an invalid first attempt."""
    ws = tmp_path / "ws"
    core_write_run(ws, "run_0", core_result())
    core_write_run(ws, "run_1", core_result(final_loss=0.0098765432101, eval={"score": 0.91}))
    core_write_run(ws, "run_2", core_result(training_steps=0, eval={"score": 0.5}))
    (ws / "run_1" / "loss_curve.json").write_text(json.dumps({"step": [1, 2], "loss": [2.0, 1.0]}))
    journal = Journal(ws / "journal.jsonl")
    journal.append("start", idea="toy")
    journal.append("llm_call", prompt_tokens=100, completion_tokens=20, cost=0.01)
    journal.append("run", run_name="run_1", attempt=1, returncode=0, timed_out=False, seconds=3.0)
    judged = {"steps": 120, "loss": 0.0098765432101, "score": 0.91}  # as the loop records them
    files = file_digests(ws / "run_1")
    journal.append("verdict", run_name="run_1", ok=True, problems=[], metrics=judged, files=files)
    journal.append("run_done", run_name="run_1", status="ok")
    journal.append("response", text="Run 1 worked: the score improved.")
    journal.append("run", run_name="run_2", attempt=1, returncode=1, timed_out=False, seconds=1.0)
    journal.append("verdict", run_name="run_2", ok=False, problems=["crash"], metrics={"steps": 7})
    journal.append("run_done", run_name="run_2", status="crashed")
    journal.append("response", text="The crash is fixed now.")
    journal.append("llm_call", prompt_tokens=50, completion_tokens=5, cost=None)
    journal.append("run", run_name="run_2", attempt=2, returncode=0, timed_out=False, seconds=2.0)
    problems = ["training_steps = 0 violates 'training_steps > 0'", "protected files changed"]
    judged = {"steps": 0, "loss": 0.012345678901, "score": 0.5}
    journal.append("verdict", run_name="run_2", ok=False, problems=problems, metrics=judged)
    journal.append("run_done", run_name="run_2", status="invalid")
    journal.append("response", text="Preliminary thoughts.")
    journal.append("response", text=CLAIM)
    core_write_run(ws, "run_3", None)
    journal.append("run", run_name="run_3", attempt=1, returncode=-15, timed_out=True, seconds=9.0)
    journal.append("run_done", run_name="run_3", status="timeout")
    journal.append("response", text="It worked")
    return ws


def _spec(tmp_path, **overrides):
    return core_spec(tmp_path / "template", **overrides)


def test_collect_runs_reads_numbers_from_disk_or_the_recorded_verdict(workspace, tmp_path):
    runs = collect_runs(workspace, _spec(tmp_path), Journal(workspace / "journal.jsonl"))
    assert [(r.name, r.attempt, r.status) for r in runs] == [
        ("run_0", None, "ok"),
        ("run_1", 1, "ok"),
        ("run_2", 1, "crashed"),
        ("run_2", 2, "invalid"),
        ("run_3", 1, "timeout"),
    ]
    run_1, crashed, invalid, timeout = runs[1:]
    assert run_1.metrics == {"steps": 120, "loss": 0.0098765432101, "score": 0.91}
    assert crashed.metrics == {"steps": 7, "loss": None, "score": None}  # as recorded
    assert crashed.problems == ["crash"] and crashed.from_journal and not invalid.from_journal
    assert invalid.metrics["steps"] == 0 and not invalid.verdict_ok  # as judged
    assert invalid.problems[1] == "protected files changed"  # the loop's verdict, as recorded
    assert invalid.analysis == CLAIM  # the last response after the run
    assert timeout.problems[0].startswith(
        "run_3/final_info.json: missing"
    )  # no verdict: file checked
    assert timeout.metrics == {"steps": None, "loss": None, "score": None}
    assert [r.claims_success_but_failed for r in runs] == [False, False, False, True, True]
    assert [r.seconds for r in runs] == [None, 3.0, 1.0, 2.0, 9.0]


def test_notes_numbers_equal_final_info_numbers_and_warn_on_false_claims(workspace, tmp_path):
    path = write_notes(
        workspace, _spec(tmp_path), Journal(workspace / "journal.jsonl"), IDEA, "REPLAYED"
    )
    notes = path.read_text()
    assert path == workspace / "notes.txt"
    assert notes.splitlines()[0] == GENERATED_MARK and notes.splitlines()[2] == "REPLAYED"
    assert "# Toy idea" in notes and "Train the toy model longer." in notes

    sections = dict(
        re.findall(r"^## (run_\d(?: \(attempt 2\))?).*?\n(.*?)(?=^## |\Z)", notes, re.M | re.S)
    )
    table = _table(notes)
    base = json.loads((workspace / "run_0" / "final_info.json").read_text())
    for column, name in ((0, "run_0"), (1, "run_1"), (3, "run_2")):  # 2: run_2's first attempt
        recorded = json.loads((workspace / name / "final_info.json").read_text())
        for metric, value, base_value in (
            ("loss", recorded["final_loss"], base["final_loss"]),
            ("score", recorded["eval"]["score"], base["eval"]["score"]),
            ("steps", recorded["training_steps"], base["training_steps"]),
        ):
            shown, _, diff = table[metric][column].partition(" ")
            assert float(shown) == pytest.approx(value, rel=1e-3)  # 4 significant digits
            if column:  # the difference from run_0, unmarked: this template has no band
                assert float(diff.strip("()")) == pytest.approx(value - base_value, rel=1e-3)
    assert table["score"][2] == "missing" and "seed-noise band" in notes

    assert "## run_1 (attempt 1): VALID" in notes
    assert "## run_2 (attempt 2): INVALID" in notes
    assert "## run_2 (attempt 1): CRASHED" in notes
    assert "as validated when this attempt ran" in notes
    assert notes.count("WARNING: the agent's analysis below claims success") == 2
    assert "## run_3 (attempt 1): TIMEOUT" in notes and "this run is TIMEOUT" in notes
    warned = sections["run_2 (attempt 2)"]
    assert "WARNING" in warned and "this run is INVALID" in warned and CLAIM in warned
    assert "WARNING" not in sections["run_1"] and "Run 1 worked" in sections["run_1"]
    assert "LLM usage: 2 calls, 175 tokens, $0.0100" in notes


def test_notes_without_banner_or_runs(tmp_path):
    ws = tmp_path / "ws"
    core_write_run(ws, "run_0", core_result(final_loss=math.nan))
    notes = write_notes(ws, _spec(tmp_path), Journal(ws / "journal.jsonl"), IDEA).read_text()
    assert notes.startswith(GENERATED_MARK + "\n# Toy idea")
    assert "## run_0: INVALID" in notes and _table(notes)["loss"] == ["nan"]
    assert "final_loss = nan violates 'final_loss finite'" in notes


def test_notes_mark_each_difference_against_the_baselines_seed_band(workspace, tmp_path):
    # run_1 vs run_0's seed MEAN (not its seed-0 files: loss 0.01235, score 0.8731): loss
    # -0.0101 under 2 x 0.01 (within), score +0.037 over 2 x 0.001 (beyond)
    write_noise(
        workspace / "run_0" / "noise.json",
        [0, 1, 2],
        [
            {"final_loss": 0.02, "eval.score": 0.873},
            {"final_loss": 0.03, "eval.score": 0.874},
            {"final_loss": 0.01, "eval.score": 0.872},
        ],
    )
    spec = _spec(tmp_path, noise="run_0/noise.json")
    notes = write_notes(workspace, spec, Journal(workspace / "journal.jsonl"), IDEA).read_text()
    table = _table(notes)
    assert table["loss"][0] == "0.02 ±0.01" and table["score"][0] == "0.873 ±0.001"
    assert table["loss"][1] == "0.009877 (-0.01012 ~)"
    assert table["score"][1] == "0.91 (+0.037 !)"
    assert table["steps"][1] == "120 (+0)"  # no band for steps: a difference, no mark
    assert "over 3\nseeds" in notes or "over 3 seeds" in notes


def test_a_missing_or_broken_noise_file_means_no_band(tmp_path, caplog):
    spec = _spec(tmp_path, noise="run_0/noise.json")
    assert load_bands(tmp_path, spec) == {} and "make baseline writes it" in caplog.text
    (tmp_path / "run_0").mkdir()
    (tmp_path / "run_0" / "noise.json").write_text('{"metrics": {}}')
    assert load_bands(tmp_path, spec) == {} and "malformed" in caplog.text


def test_a_prompt_line_says_whether_a_difference_is_beyond_seed_noise():
    band = Band(mean=0.5, spread=0.01, n_seeds=3)
    assert compared(0.53, 0.52, band, "run_0") == (  # from the mean 0.5, not seed 0's 0.52
        "0.53 (run_0 mean 0.5 ±0.01 over 3 seeds, difference +0.03: beyond seed noise)"
    )
    assert "within seed noise" in compared(0.515, 0.5, band, "run_0")
    assert compared(0.515, 0.5, None, "run_0") == "0.515 (run_0 0.5, difference +0.015)"
    assert compared(None, 0.5, band, "run_0") == "missing"


def test_a_metric_every_seed_agrees_on_marks_only_a_change():
    fixed = Band(mean=610, spread=0.0, n_seeds=3)  # e.g. training steps: the same at every seed
    assert difference(610, 610, fixed) == "+0 ~"
    assert difference(600, 610, fixed) == "-10 !"


def _table(notes: str) -> dict[str, list[str]]:
    """notes.txt's key-metrics table: metric -> one cell per run column."""
    block = notes.split("## Key metrics")[1].split("\n\n")[1]
    rows = [re.split(r"\s{2,}", line.strip()) for line in block.splitlines()]
    return {row[0]: row[1:] for row in rows[2:]}  # after the run names and the verdicts


def test_the_agents_own_notes_file_is_kept_across_regenerations(workspace, tmp_path):
    agent_text = "# Agent notes\nRun 1: EV 0.99 (typed by the agent)."
    (workspace / "notes.txt").write_text(agent_text + "\n")
    spec, journal = _spec(tmp_path), Journal(workspace / "journal.jsonl")
    first = write_notes(workspace, spec, journal, IDEA).read_text()
    second = write_notes(workspace, spec, journal, IDEA).read_text()
    assert first == second
    assert first.endswith(f"\n{AGENT_NOTES_HEADING}\n{agent_text}\n")
    assert first.count(agent_text) == 1


@pytest.mark.parametrize(
    ("text", "claimed"),
    [
        ("The experiment succeeded.", True),
        ("Training completed successfully with 120 steps", True),
        ("Reconstruction improved over the baseline.", True),
        ("It worked!", True),
        ("This run was not successful.", False),
        ("Training did not succeed; the loss is NaN.", False),
        ("The approach failed to improve anything and never worked.", False),
        ("Success was not achieved.", False),
        ("The run was unsuccessful because no step ran.", False),
        ("We saw no improvement. Next, try a larger learning rate.", False),
        ("It didn't work. However, the next run succeeded", True),
        ("", False),
    ],
)
def test_claims_success(text, claimed):
    assert claims_success(text) is claimed


def test_failing_plot_command_falls_back_to_builtin_plots(workspace, tmp_path):
    spec = _spec(tmp_path, plot_command=["{python}", "-c", "raise SystemExit('plot broke')"])
    paths = make_plots(workspace, spec, Journal(workspace / "journal.jsonl"), live=False)
    assert paths == [
        workspace / "plots" / "key_metrics.png",
        workspace / "plots" / "loss_curves.png",
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plot broke" in (workspace / "plot_log.txt").read_text()


def _three_seed_band(workspace) -> None:
    """run_0's band: score mean 0.873, spread 0.001; loss mean 0.02, spread 0.01."""
    per_seed = [
        {"final_loss": loss, "eval.score": score}
        for loss, score in ((0.02, 0.873), (0.03, 0.874), (0.01, 0.872))
    ]
    write_noise(workspace / "run_0" / "noise.json", [0, 1, 2], per_seed)


def test_the_effect_plot_replaces_the_bars_where_a_seed_band_exists(workspace, tmp_path):
    _three_seed_band(workspace)
    spec = _spec(tmp_path, noise="run_0/noise.json")
    confirmed = {"score": [0.905, 0.91, 0.915]}  # the confirmed run's seeds, drawn as a range
    journal = Journal(workspace / "journal.jsonl")
    paths = make_plots(workspace, spec, journal, live=False, confirmed=confirmed)
    assert paths == [workspace / "plots" / "effects.png", workspace / "plots" / "loss_curves.png"]
    assert (workspace / "plots" / "effects.png").read_bytes()[:4] == b"\x89PNG"
    run_1 = collect_runs(workspace, spec, journal)[1]
    sizes = effect_sizes(run_1, list(spec.key_metrics), load_bands(workspace, spec))
    assert sizes["score"] == pytest.approx(37.0)  # (0.91 - 0.873) / 0.001: beyond ±2
    assert sizes["loss"] == pytest.approx(-1.0123, abs=1e-4)  # (0.009877 - 0.02) / 0.01
    assert "steps" not in sizes  # no band, no unit to measure it in


def test_the_plot_command_cannot_replace_the_effect_plot(workspace, tmp_path):
    _three_seed_band(workspace)
    forge = "open('plots/effects.png', 'wb').write(b'forged'); open('plots/fig.png', 'wb')"
    spec = _spec(tmp_path, noise="run_0/noise.json", plot_command=["{python}", "-c", forge])
    paths = make_plots(workspace, spec, Journal(workspace / "journal.jsonl"), live=False)
    assert paths == [workspace / "plots" / "fig.png", workspace / "plots" / "effects.png"]
    assert (workspace / "plots" / "effects.png").read_bytes()[:4] == b"\x89PNG"


def test_template_plot_command_output_is_used(workspace, tmp_path):
    png = "import shutil, sys; open('plots/fig.png', 'wb').write(b'\\x89PNG fake')"
    spec = _spec(tmp_path, plot_command=["{python}", "-c", png])
    paths = make_plots(workspace, spec, Journal(workspace / "journal.jsonl"), live=False)
    assert paths == [workspace / "plots" / "fig.png"]
    assert not (workspace / "plots" / "key_metrics.png").exists()  # no fallback needed


@pytest.mark.skipif(bool(sandbox.probe().missing()), reason=sandbox.probe().summary())
def test_the_plot_command_may_write_plots_only(workspace, tmp_path):
    """plot.py is agent code: sandboxed like the experiment, it cannot touch the records."""
    tamper = "open('journal.jsonl', 'a').write('forged')"
    spec = _spec(tmp_path, plot_command=["{python}", "-c", tamper])
    before = (workspace / "journal.jsonl").read_text()
    make_plots(workspace, spec, Journal(workspace / "journal.jsonl"), live=False)
    assert (workspace / "journal.jsonl").read_text() == before
    assert "PermissionError" in (workspace / "plot_log.txt").read_text()


def test_runs_table_lists_runs_verdicts_metrics_and_totals(workspace, tmp_path):
    journal = Journal(workspace / "journal.jsonl")
    runs = collect_runs(workspace, _spec(tmp_path), journal)
    console = Console(record=True, width=120)
    console.print(runs_table(runs, journal.usage(), wall_seconds=90))
    text = console.export_text()
    for expected in ("run_0", "run_1 #1", "run_2 #2", "VALID", "CRASHED", "INVALID", "0.91"):
        assert expected in text
    # one column per run attempt, one row per metric; 4 significant digits in the table
    assert "0.009877" in text and "0.0098765432101" not in text
    assert "175 LLM tokens, $0.0100, wall 1.5 min" in text


def test_the_closing_table_shows_the_baseline_mean_and_differences_from_it(workspace, tmp_path):
    journal = Journal(workspace / "journal.jsonl")
    runs = collect_runs(workspace, _spec(tmp_path), journal)
    bands = {"score": Band(mean=0.873, spread=0.001, n_seeds=3)}  # seed 0 scored 0.8731
    console = Console(record=True, width=160)
    console.print(runs_table(runs, journal.usage(), wall_seconds=90, bands=bands))
    row = next(line for line in console.export_text().splitlines() if line.startswith("│ score"))
    assert "0.873 ±0.001" in row and "0.91 (+0.037 !)" in row and "0.5 (-0.373 !)" in row


def test_edit_blocks_are_shortened_in_the_agent_analysis():
    reply = (
        "Raise the learning rate.\n\nexperiment.py\n```python\n<<<<<<< SEARCH\nlr = 1\n=======\n"
        "lr = 2\n>>>>>>> REPLACE\n```\n\nThen compare with run_0."
    )
    assert without_edit_blocks(reply) == (
        "Raise the learning rate.\n\n[edit to experiment.py: the diff is in git log]\n\n"
        "Then compare with run_0."
    )
    assert without_edit_blocks("No edits, just analysis.") == "No edits, just analysis."


def test_a_turns_edit_blocks_become_one_line_with_the_commits_line_counts():
    block = "{}\n```python\n<<<<<<< SEARCH\nlr = 1\n=======\nlr = 2\n>>>>>>> REPLACE\n```"
    edits = [block.format("experiment.py"), "Why.", block.format("plot.py")]
    reply = "\n\n".join(["Two edits.", *edits])
    commit = {"sha": "1a2b3c4d5e6f", "files": ["experiment.py", "plot.py"]}
    counted = commit | {"stats": {"experiment.py": [12, 3], "plot.py": [1, 0]}}
    assert without_edit_blocks(reply, counted) == (
        "Two edits.\n\n[edit to experiment.py +12 -3, plot.py +1 -0: git show 1a2b3c4d]\n\nWhy.\n\n"
    )
    assert "[edit to experiment.py, plot.py: the diff is in git log]" in without_edit_blocks(
        reply,
        commit,  # a journal from before commits recorded their stats
    )
    twice = "\n\n".join([block.format("experiment.py")] * 2)
    assert without_edit_blocks(twice) == "[edit to experiment.py: the diff is in git log]\n\n"


def test_a_git_note_has_the_verdict_and_differences_from_the_baseline_mean(workspace, tmp_path):
    runs = collect_runs(workspace, _spec(tmp_path), Journal(workspace / "journal.jsonl"))
    bands = {"score": Band(mean=0.873, spread=0.001, n_seeds=3)}
    assert run_note(runs[1], runs[0], bands).splitlines() == [
        "run_1 (attempt 1): VALID",
        "steps: 120 (+0)",
        "loss: 0.009877 (-0.002469)",
        "score: 0.91 (+0.037 !)",
        "(differences from run_0's seed mean; ~ within 2 seed spreads, ! beyond)",
    ]
    invalid = run_note(runs[3], runs[0], bands).splitlines()
    assert invalid[:3] == ["run_2 (attempt 2): INVALID", *(f"- {p}" for p in runs[3].problems)]


def test_a_run_file_changed_after_its_verdict_is_flagged_not_reread(workspace, tmp_path):
    (workspace / "run_1" / "final_info.json").write_text(json.dumps(core_result(eval={"score": 1})))
    run_1 = collect_runs(workspace, _spec(tmp_path), Journal(workspace / "journal.jsonl"))[1]
    assert run_1.metrics["score"] == 0.91  # the judged number, not the edited file's
    assert run_1.changed_after_verdict == ["final_info.json"]
    notes = write_notes(workspace, _spec(tmp_path), Journal(workspace / "journal.jsonl"), IDEA)
    assert "files of run_1 changed after its verdict: final_info.json" in notes.read_text()
