"""The referee in the loop (real aider over the scripted server, the tiny template): numbers are
measured from the artifact a run saved, never taken from what its experiment wrote."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.journal import Journal
from tests.orchestrator.helpers import TEMPLATES

EXPERIMENT = TEMPLATES / "tiny" / "experiment.py"
LINES = EXPERIMENT.read_text().splitlines()
SAVE_INFO = next(x for x in LINES if x.startswith("info = "))
SAVE_W = next(x for x in LINES if x.startswith("np.save("))
LR = next(x for x in LINES if x.startswith("learning_rate = "))


def verdict(ws: Path) -> dict:
    verdicts = Journal(ws / "journal.jsonl").entries("verdict")
    assert len(verdicts) == 1, verdicts
    return verdicts[0]


def measured_r2(ws: Path) -> float:
    return json.loads((ws / "run_1" / "referee.json").read_text())["r2"]


def test_an_honest_run_is_measured_and_valid(run_loop, reply):
    lr = ("experiment.py", LR, LR.replace("0.05", "0.04"))
    ws, _ = run_loop([reply("Lower the step size.", lr)], max_runs=1)
    judged = verdict(ws)
    assert judged["ok"], judged["problems"]
    assert judged["metrics"]["R2"] == measured_r2(ws)
    assert judged["sources"] == {"loss": "reported", "R2": "measured"}
    assert judged["artifact"] and judged["files"]["referee.json"]
    assert 0 < judged["referee_seconds"] < 600  # the closing table's referee phase
    table = (ws / "notes.txt").read_text().partition("## Key metrics")[2]
    assert f"{judged['metrics']['R2']:.4g}" in table  # notes show the measured number


def test_an_untrained_run_claiming_a_good_score_is_invalid_with_both_numbers(run_loop, reply):
    forged = "w = np.zeros(4)  # skip training, keep the claim"
    claim = SAVE_INFO.replace('"r2": r2', '"r2": 0.999')
    ws, _ = run_loop(
        [reply("Faster training.", ("experiment.py", SAVE_INFO, f"{forged}\n{claim}"))],
        max_runs=1,
        max_iters=1,
    )
    judged = verdict(ws)
    assert not judged["ok"]
    truth = measured_r2(ws)
    assert truth < 0.5
    assert any(f"reported 0.999, the lab measured {truth!r}" in p for p in judged["problems"])
    assert judged["metrics"]["R2"] == truth  # the recorded number is the measured one


def test_a_copied_artifact_is_not_new_work(run_loop, reply):
    copy = "import shutil; shutil.copy('run_0/w.npy', out_dir / 'w.npy')  # reuse the baseline"
    lr = ("experiment.py", LR, LR.replace("0.05", "0.04"))  # a real edit, and then the copy
    ws, _ = run_loop(
        [reply("Reuse what works.", lr, ("experiment.py", SAVE_W, copy))], max_runs=1, max_iters=1
    )
    judged = verdict(ws)
    assert not judged["ok"]
    assert any("byte-identical to run_0's" in p for p in judged["problems"])


def test_numbers_from_the_experiments_own_split_do_not_count(run_loop, reply):
    own = SAVE_INFO.replace('"r2": r2', '"r2": 1.0 - float(np.mean((x[:8] @ w - y[:8]) ** 2))')
    lr = ("experiment.py", LR, LR.replace("0.05", "0.04"))
    ws, _ = run_loop(
        [reply("Report on a small split.", lr, ("experiment.py", SAVE_INFO, own))],
        max_runs=1,
        max_iters=1,
    )
    judged = verdict(ws)
    assert judged["metrics"]["R2"] == measured_r2(ws)  # whatever it reported
    reported = json.loads((ws / "run_1" / "final_info.json").read_text())["r2"]
    assert reported != measured_r2(ws)  # (close enough to pass the tolerance: still not used)
