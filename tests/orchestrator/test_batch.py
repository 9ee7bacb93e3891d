"""Many ideas at once: the real CLI fanning the real loop out over a local Ray instance, each idea
replaying its fixture playbook (tiny_lr and tiny_fast train, tiny_crash crashes every run)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator import batch
from orchestrator.journal import Journal
from orchestrator.report import noise, summary
from orchestrator.templates import load_template
from tests.orchestrator.helpers import IDEAS as IDEAS_DIR
from tests.orchestrator.helpers import REPO, TEMPLATES, flag_readable, wait_for

IDEAS = ("tiny_lr", "tiny_fast", "tiny_crash")
BATCH = ("--max-runs", "1", "--max-iters", "2")
EXPERIMENT = TEMPLATES / "tiny/experiment.py"


def workspaces(results: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(results.glob("*/journal.jsonl")):
        found.setdefault(Journal(path).last("start")["idea"], []).append(path.parent)
    return found


def statuses(ws: Path) -> list[tuple[str, str]]:
    return [(e["run_name"], e["status"]) for e in Journal(ws / "journal.jsonl").entries("run_done")]


def launch(launch_args, *extra: str) -> subprocess.CompletedProcess:
    command = launch_args("--ideas", ",".join(IDEAS), *BATCH, *extra)
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_three_ideas_on_two_workers_one_crashing(tmp_path, launch_args):
    done = launch(launch_args, "--workers", "2")
    assert done.returncode == 1, done.stdout + done.stderr  # one idea has no VALID run
    found = workspaces(tmp_path / "results")
    assert sorted(found) == sorted(IDEAS) and all(len(ws) == 1 for ws in found.values())
    ws = {idea: paths[0] for idea, paths in found.items()}
    assert statuses(ws["tiny_lr"]) == statuses(ws["tiny_fast"]) == [("run_1", "ok")]
    assert statuses(ws["tiny_crash"]) == [("run_1", "crashed"), ("run_1", "crashed")]
    ends = {idea: Journal(path / "journal.jsonl").last("end") for idea, path in ws.items()}
    assert ends["tiny_crash"]["reason"] == "run_1 failed 2 times in a row"
    assert all(ends.values())
    # two workers: the first two loops ran at the same time
    spans = [_span(ws[idea]) for idea in ("tiny_lr", "tiny_fast")]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]
    record = Journal(tmp_path / "results" / batch.BATCH_FILE)
    assert sorted(e["idea"] for e in record.entries("idea_done")) == sorted(IDEAS)
    assert not any(e["error"] for e in record.entries("idea_done")) and record.last("batch_end")
    assert "Applied edit" in (tmp_path / "results/logs/tiny_crash.log").read_text()


def _span(ws: Path) -> tuple[str, str]:
    entries = Journal(ws / "journal.jsonl").entries()
    return entries[0]["ts"], entries[-1]["ts"]


def test_summary_numbers_come_from_the_journals(tmp_path, launch_args):
    done = launch(launch_args)
    assert done.returncode == 1, done.stdout + done.stderr
    results = tmp_path / "results"
    text = (results / summary.SUMMARY_FILE).read_text()
    assert (results / "summary_tiny.png").is_file()
    assert "| best VALID run | run_0 | run_1 | run_1 | none |" in text
    assert "| runs valid / failed |  | 1 / 0 | 1 / 0 | 0 / 2 |" in text
    ws = {idea: paths[0] for idea, paths in workspaces(results).items()}
    (verdict,) = Journal(ws["tiny_fast"] / "journal.jsonl").entries("verdict")
    assert f"{verdict['metrics']['R2']:.4g} (" in text.split("| R2 |")[1].split("\n")[0]
    # a file changed after its verdict does not change the summary: the journal is the record
    info = ws["tiny_fast"] / "run_1/final_info.json"
    info.write_text(info.read_text().replace('"r2": 0.', '"r2": 0.1'))
    (results / summary.SUMMARY_FILE).unlink()
    again = subprocess.run(
        launch_args("--summary", str(results)), cwd=REPO, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert (results / summary.SUMMARY_FILE).read_text() == text
    assert "Ideas on template tiny" in again.stdout


def _batch_pids(home: Path) -> list[int]:
    """Processes of this test's batch (they alone have its HOME)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"HOME={home}".encode() in environ and proc.name.isdigit():
            found.append(int(proc.name))
    return found


def test_killed_driver_resumes_the_batch(tmp_path, launch_args, reply):
    # tiny_lr's run sleeps while the flag file says so: the driver is killed during it, and
    # the flag is emptied before the same command runs again
    results, ideas, flag = tmp_path / "results", tmp_path / "ideas", tmp_path / "flag/sleep.flag"
    shutil.copytree(IDEAS_DIR, ideas)
    flag.parent.mkdir()
    flag.write_text("60")
    templates = flag_readable(TEMPLATES, tmp_path / "templates", flag)
    lines = {x.split(" = ")[0]: x for x in EXPERIMENT.read_text().splitlines() if " = " in x}
    slow = f'sleep_seconds = float(__import__("pathlib").Path({str(flag)!r}).read_text() or 0)'
    edits = [("experiment.py", lines["sleep_seconds"], slow)]
    edits.append(("experiment.py", lines["steps"], lines["steps"].replace("200", "300")))
    playbook = {"responses": [reply("Sleep when asked; more steps.", *edits)]}
    (ideas / "playbooks/tiny_lr.json").write_text(json.dumps(playbook))
    command = launch_args(
        "--ideas", "tiny_fast,tiny_lr", *BATCH, "--workers", "1", "--ideas-dir", str(ideas)
    ) + ["--template-dir", str(templates)]  # the last one given wins
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_for(lambda: list(results.glob("*_tiny_lr/run_1/.runner.pgid")), 120)
        finally:
            driver.kill()  # SIGKILL: no cleanup of any kind
            driver.wait()
    os.killpg(driver.pid, signal.SIGKILL)  # what Ray left in the driver's group (its agents)
    wait_for(lambda: not _batch_pids(Path(os.environ["HOME"])), 60)  # its workers are gone
    ws = {idea: paths[0] for idea, paths in workspaces(results).items()}
    before = {idea: (path / "journal.jsonl").read_text() for idea, path in ws.items()}
    assert Journal(ws["tiny_fast"] / "journal.jsonl").last("end")
    assert not Journal(ws["tiny_lr"] / "journal.jsonl").entries("run")

    flag.write_text("")
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming the batch" in again.stdout
    assert "tiny_fast: its workspace ended earlier in this batch; kept" in again.stdout
    assert workspaces(results) == {idea: [path] for idea, path in ws.items()}
    assert (ws["tiny_fast"] / "journal.jsonl").read_text() == before["tiny_fast"]  # not rerun
    assert (ws["tiny_lr"] / "journal.jsonl").read_text().startswith(before["tiny_lr"])
    assert statuses(ws["tiny_lr"]) == [("run_1", "ok")]
    assert Journal(results / batch.BATCH_FILE).last("batch_end")


def test_a_template_asking_more_than_the_instance_has_is_refused():
    spec = load_template(TEMPLATES / "tiny")
    greedy = replace(spec, resources={"num_cpus": 1.0, "num_gpus": 1.0})
    ray = SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0})
    batch._check_room(ray, [spec], local=True)  # fits
    with pytest.raises(batch.BatchError, match="asks for 1 GPU per idea .* has 0") as err:
        batch._check_room(ray, [greedy], local=True)
    assert "resources.num_gpus" in str(err.value) and "\n" not in str(err.value)
    batch._check_room(ray, [greedy], local=False)  # a cluster may grow: a warning, not a refusal


def test_summary_marks_noise_and_reported_numbers():
    row = summary.IdeaSummary(
        "a",
        "t",
        Path("ws"),
        "ended: done",
        best="run_2",
        metrics={"EV": 0.93, "L0": 40.0},
        sources={"EV": "measured", "L0": "reported"},
        baseline={"EV": 0.92, "L0": 48.0},
        bands={"EV": noise.Band(0.92, 0.01, 3), "L0": noise.Band(48.0, 1.0, 3)},
    )
    assert summary._cell(row, "EV") == "0.93 (+0.01 ~)"  # 0.01 < 2 x 0.01: within seed noise
    assert summary._cell(row, "L0") == "40 (-8 !) (reported)"  # 8 > 2 x 1: beyond it
    _, body = summary.rows([row])
    assert ["EV", "0.92 ±0.01", "0.93 (+0.01 ~)"] in body
    assert summary._cell(summary.IdeaSummary("b", "t", None, "not started"), "EV") == ""
