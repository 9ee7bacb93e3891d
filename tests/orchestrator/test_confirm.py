"""Confirmation seeds end to end: the tiny template made seedable (its init drawn from --seed,
under-trained at 10 steps so R2 moves with the step size), its run_0 trained at 3 seeds with
its noise band, an idea that declares "R2 up"; the loop's best run confirmed at 2 more seeds,
then the findings read from the journal."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.ideas import load_idea
from orchestrator.journal import Journal
from orchestrator.report import findings, noise
from orchestrator.templates import load_template
from tests.orchestrator.helpers import (
    IDEAS,
    REPO,
    TEMPLATES,
    flag_readable,
    kinds,
    knob,
    statuses,
    wait_for,
)

SEEDS = [0, 1, 2]
EDITS = {  # what the experiment's source says -> what the seedable variant says
    "steps = 200 ": "steps = 10 ",
    'parser.add_argument("--out_dir", required=True)\n': (
        'parser.add_argument("--out_dir", required=True)\n'
        'parser.add_argument("--seed", type=int, default=0)\n'
    ),
    "out_dir = Path(parser.parse_args().out_dir)": (
        "args = parser.parse_args()\nout_dir = Path(args.out_dir)"
    ),
    "w = np.zeros(4)": "w = np.random.default_rng(1000 + args.seed).normal(size=4)",
}
HYPOTHESIS = {"metric": "R2", "direction": "up", "why": "a larger step converges further"}


@pytest.fixture(scope="module")
def seedable(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(templates dir, ideas dir): the seedable tiny template and an idea with a hypothesis."""
    root = tmp_path_factory.mktemp("seedable")
    template = Path(shutil.copytree(TEMPLATES / "tiny", root / "templates" / "tiny"))
    source = (template / "experiment.py").read_text()
    for old, new in EDITS.items():
        assert old in source, old
        source = source.replace(old, new)
    (template / "experiment.py").write_text(source)
    raw = json.loads((template / "template.json").read_text())
    raw |= {"seed_arg": ["--seed={seed}"], "noise": "run_0/noise.json"}
    (template / "template.json").write_text(json.dumps(raw, indent=1))
    _baseline(template)
    ideas = root / "ideas"
    ideas.mkdir()
    idea = json.loads((IDEAS / "tiny_lr.json").read_text()) | {"Hypotheses": [HYPOTHESIS]}
    (ideas / "tiny_lr.json").write_text(json.dumps(idea))
    return template.parent, ideas


def _baseline(template: Path) -> None:
    """run_0 = seed 0, measured by the template's referee; noise.json over seeds 0, 1, 2."""
    shutil.rmtree(template / "run_0")
    per_seed = []
    for seed in SEEDS:
        name = "run_0" if seed == 0 else f"seed_{seed}"
        run = [sys.executable, "experiment.py", f"--out_dir={name}", f"--seed={seed}"]
        subprocess.run(run, cwd=template, check=True, capture_output=True)
        referee = [sys.executable, "referee.py", name, f"{name}/referee.json"]
        subprocess.run(referee, cwd=template, check=True, capture_output=True)
        info = json.loads((template / name / "final_info.json").read_text())
        measured = json.loads((template / name / "referee.json").read_text())
        per_seed.append({"final_loss": info["final_loss"], "r2": measured["r2"]})
        if seed:
            shutil.rmtree(template / name)
    noise.write_noise(template / "run_0" / "noise.json", SEEDS, per_seed)


def _findings(ws: Path) -> findings.Findings:
    spec = load_template(ws)
    idea = load_idea("tiny_lr", Path(Journal(ws / "journal.jsonl").started["ideas_dir"]))
    return findings.compute(ws, spec, Journal(ws / "journal.jsonl"), idea.hypotheses)


@pytest.mark.parametrize(
    ("learning_rate", "expected"),
    [
        ("0.08", findings.SUPPORTED),  # R2 0.915 -> 0.976 at 10 steps, seed spreads 0.017/0.006
        ("0.0501", findings.NOISE),  # a real edit (a new artifact) that moves R2 by 0.0004
        ("0.03", findings.CONTRADICTED),  # R2 0.915 -> 0.81
    ],
)
def test_confirmed_run_gets_the_verdict_its_change_earns(
    run_loop, reply, seedable, learning_rate, expected
):
    templates, ideas = seedable
    responses = [
        reply("Change the step size.", knob("learning_rate", learning_rate)),
        reply("Done.", tail="ALL_COMPLETED"),
    ]
    ws, _ = run_loop(
        responses, templates_dir=templates, ideas_dir=ideas, max_runs=1, confirm_seeds=2
    )
    assert statuses(ws) == [("run_1", "ok")]
    done = [(e["run_name"], e["seed"], e["status"]) for e in kinds(ws, "confirm_done")]
    assert done == [("run_1_seed1", 1, "ok"), ("run_1_seed2", 2, "ok")]
    # the confirmation ran the committed change: each seed's learning rate is the edited one
    for seed in (1, 2):
        info = json.loads((ws / f"run_1_seed{seed}" / "final_info.json").read_text())
        assert info["learning_rate"] == float(learning_rate)
    found = _findings(ws)
    (row,) = found.rows
    assert (row.verdict, row.effect.run.n, row.effect.baseline.n) == (expected, 3, 3)
    notes = (ws / "notes.txt").read_text()
    assert f"R2 up: {expected.upper()}" in notes
    assert "confirmed at 3 seeds" in notes and notes.index("## Findings") < notes.index("## run_1")


def test_without_confirmation_the_notes_say_so(run_loop, reply, seedable):
    templates, ideas = seedable
    responses = [reply("Faster.", knob("learning_rate", "0.08")), reply("Done. ALL_COMPLETED")]
    ws, _ = run_loop(
        responses, templates_dir=templates, ideas_dir=ideas, max_runs=1, confirm_seeds=0
    )
    assert not kinds(ws, "confirm") and not kinds(ws, "confirm_run")
    assert "not confirmed (confirmation off: --confirm-seeds 0)" in (ws / "notes.txt").read_text()
    (row,) = _findings(ws).rows
    assert row.effect.run.n == 1


def test_kill_during_a_confirmation_run_resumes_it(tmp_path, scripted, reply, seedable):
    flag = tmp_path / "flag" / "sleep.flag"
    flag.parent.mkdir()
    flag.write_text("60")  # only the first launch's seed-2 run hangs
    templates, ideas = flag_readable(seedable[0], tmp_path / "templates", flag), seedable[1]
    hang = (
        f'float(__import__("pathlib").Path({str(flag)!r}).read_text() or 0) '
        'if "--seed=2" in __import__("sys").argv else 0.0'
    )
    edit = reply(
        "Faster, and hang at seed 2.", knob("learning_rate", "0.08"), knob("sleep_seconds", hang)
    )
    server = scripted([edit, reply("Done.", tail="ALL_COMPLETED")])
    launch = [
        sys.executable,
        str(REPO / "launch_scientist.py"),
        *("--results-dir", str(tmp_path / "results"), "--template-dir", str(templates)),
        *("--ideas-dir", str(ideas), "--allow-dirty-code"),
    ]
    first = [*launch, "--idea", "tiny_lr", "--model", "openai/scripted", "--api-base", server.url]
    first += ["--max-runs", "1", "--confirm-seeds", "2"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(first, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            pid_file = wait_for(lambda: _pid_file(tmp_path / "results", "run_1_seed2"), 90)
        finally:
            proc.kill()  # SIGKILL mid-run
            proc.wait()
    ws = pid_file.parents[1]
    assert [e["seed"] for e in kinds(ws, "confirm_done")] == [1] and not kinds(ws, "end")

    flag.write_text("")
    done = subprocess.run(
        [*launch, "--resume", str(ws)], cwd=REPO, capture_output=True, timeout=180
    )
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    assert [(e["seed"], e["status"]) for e in kinds(ws, "confirm_done")] == [(1, "ok"), (2, "ok")]
    assert [e["seed"] for e in kinds(ws, "confirm_run")] == [1, 2]  # seed 1 was not run again
    assert len(kinds(ws, "confirm")) == 1 and len(kinds(ws, "end")) == 1
    assert len(server.requests) == 2  # no agent turn was asked again
    (row,) = _findings(ws).rows
    assert (row.verdict, row.effect.run.n) == (findings.SUPPORTED, 3)
    assert "confirmed at 3 seeds" in (ws / "notes.txt").read_text()


def _pid_file(results: Path, run_name: str) -> Path | None:
    found = [p for p in results.glob(f"*/{run_name}/.runner.pgid") if p.read_text().strip()]
    return found[0] if found else None
