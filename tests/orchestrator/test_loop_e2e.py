"""The real loop end to end: real aider and litellm over HTTP to a scripted server on
127.0.0.1, the tiny numpy template, real runs, real validation."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import git
import pytest

from orchestrator.agent.replay_server import END_MARKER
from orchestrator.journal import Journal
from orchestrator.trust import sandbox
from orchestrator.trust.workspace import Workspace
from tests.orchestrator.helpers import (
    EXPERIMENT,
    REPO,
    TEMPLATES,
    alive,
    argv,
    descendants,
    flag_readable,
    kinds,
    knob,
    set_knob,
    statuses,
    wait_for,
)


def test_clean_two_run_loop_commits_each_edit(run_loop, reply):
    responses = [
        set_knob(reply, "Plan: more steps, then a larger step size.", "steps", "300"),
        set_knob(reply, "Raise the learning rate to 0.1.", "learning_rate", "0.1"),
        reply(
            "Both runs beat the baseline loss.",
            ("notes.txt", "Notes on the tiny experiment.", "Run 1: 300 steps. Run 2: lr 0.1."),
            tail="ALL_COMPLETED",
        ),
    ]
    ws, server = run_loop(responses, max_runs=2)
    assert statuses(ws) == [("run_1", "ok"), ("run_2", "ok")]
    assert json.loads((ws / "run_1/final_info.json").read_text())["training_steps"] == 300
    assert json.loads((ws / "run_2/final_info.json").read_text())["learning_rate"] == 0.1
    subjects = [c.message.strip() for c in git.Repo(ws).iter_commits()][::-1]
    assert subjects == [
        "template: pristine tiny",
        "run_1: Plan: more steps, then a larger step size.",
        "run_2: Raise the learning rate to 0.1.",
        "final analysis: Both runs beat the baseline loss.",
    ]
    assert kinds(ws, "end")[-1]["reason"] == "agent answered ALL_COMPLETED"
    assert len(server.requests) == 3 and not server.exhausted
    # the git log tells the story: each commit's stats journaled, each run's result on its commit
    assert [c["stats"] for c in kinds(ws, "commit")] == [
        {"experiment.py": [1, 1]},
        {"experiment.py": [1, 1]},
        {"notes.txt": [1, 1]},
    ]
    log = subprocess.run(
        ["git", "log", "--decorate", "--notes", "--format=%s%d%n%N"],
        cwd=ws,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    r2_line = next(x for x in log.splitlines() if x.startswith("R2: "))
    r2 = json.loads((ws / "run_2/final_info.json").read_text())["r2"]
    assert "run_2: Raise the learning rate to 0.1. (tag: run_2)\nrun_2 (attempt 1): VALID" in log
    assert "run_1: Plan: more steps, then a larger step size. (tag: run_1)" in log
    assert r2_line.startswith(f"R2: {r2:.4g}")  # the newest commit's note: run_2's number
    analysis = (ws / "notes.txt").read_text().partition("## run_2")[2]
    assert f"[edit to notes.txt +1 -1: git show {kinds(ws, 'commit')[2]['sha'][:8]}]" in analysis
    # the after-run prompt quotes the recorded numbers, not anything the agent typed
    r2 = json.loads((ws / "run_1/final_info.json").read_text())["r2"]
    assert str(r2) in server.requests[1]["messages"][-1]["content"]
    assert len(kinds(ws, "llm_call")) == 3
    assert (ws / "notes.txt").read_text().count("VALID") >= 2


LOSS_LINE = "loss = float(np.mean((x @ w - y) ** 2))"
CRASH_LINE = "loss = float(np.mean((x @ w - y) ** 2)) / int(steps * 0)"


def last_prompt(server, i: int) -> str:
    return server.requests[i]["messages"][-1]["content"]


def test_crash_traceback_is_fed_back_then_fixed(run_loop, reply):
    responses = [
        reply("Normalise the loss.", ("experiment.py", LOSS_LINE, CRASH_LINE)),
        # a fix that only undid the edit would hand in run_0's weights again: not new work
        reply(
            "Undo the division by zero.",
            ("experiment.py", CRASH_LINE, LOSS_LINE),
            knob("learning_rate", "0.04"),
        ),
    ]
    ws, server = run_loop(responses, max_runs=1)
    assert statuses(ws) == [("run_1", "crashed"), ("run_1", "ok")]
    feedback = last_prompt(server, 1)
    assert "ZeroDivisionError" in feedback and "stderr" in feedback  # the traceback
    assert "training for 200 steps" in feedback  # and the stdout tail
    subjects = [c.message.strip() for c in git.Repo(ws).iter_commits()][::-1]
    assert subjects[1:] == [
        "run_1: Normalise the loss.",
        "run_1 (attempt 2): Undo the division by zero.",
    ]
    crashed, fixed = (c["sha"] for c in kinds(ws, "commit"))
    note = subprocess.run(["git", "notes", "show", crashed], cwd=ws, capture_output=True, text=True)
    assert note.stdout.startswith("run_1 (attempt 1): CRASHED")
    tagged = git.Repo(ws).tags["run_1"]
    assert tagged.commit.hexsha == fixed  # the tag marks the attempt that passed
    assert tagged.tag.message.startswith("run_1 (attempt 2): VALID")


def test_zero_training_steps_is_invalid_and_run_number_stays(run_loop, reply):
    responses = [
        set_knob(reply, "Skip training to save time.", "steps", "0"),
        set_knob(reply, "Train for 100 steps after all.", "steps", "100", was="0"),
    ]
    ws, server = run_loop(responses, max_runs=1)
    assert statuses(ws) == [("run_1", "invalid"), ("run_1", "ok")]
    verdicts = kinds(ws, "verdict")
    assert not verdicts[0]["ok"] and any("training_steps" in p for p in verdicts[0]["problems"])
    feedback = last_prompt(server, 1)
    assert "failed validation" in feedback and "training_steps" in feedback
    assert json.loads((ws / "run_1/final_info.json").read_text())["training_steps"] == 100
    assert not (ws / "run_2").exists()
    assert "INVALID" in (ws / "notes.txt").read_text()


def test_protected_file_edit_is_reverted_and_agent_told(run_loop, reply):
    pristine = (ws_template := TEMPLATES / "tiny" / "template.json").read_bytes()
    responses = [
        reply(
            "More steps, and a longer timeout.",
            ("template.json", '  "timeout_seconds": 30,', '  "timeout_seconds": 3000,'),
            knob("steps", "250"),
            ("../outside.py", "", "print('escaped the workspace')"),
        )
    ]
    ws, server = run_loop(responses, max_runs=1)
    assert not (ws.parent / "outside.py").exists()  # beyond the guard's reach: aider refuses
    assert (ws / "template.json").read_bytes() == pristine == ws_template.read_bytes()
    reverts = kinds(ws, "revert")
    assert [r["files"] for r in reverts] == [["template.json"]]
    assert statuses(ws) == [("run_1", "ok")]  # the allowed part of the edit still ran
    assert "template.json" in last_prompt(server, 1) and "restored" in last_prompt(server, 1)
    touched = git.Repo(ws).git.log("--format=%s", "--", "template.json").splitlines()
    assert touched == ["template: pristine tiny"]


def test_experiment_writing_a_protected_file_invalidates_the_run(run_loop, reply):
    tamper = 'Path("template.json").write_text("{}")  # relax the rules'
    save = next(x for x in EXPERIMENT.read_text().splitlines() if x.startswith("# ---- save"))
    responses = [reply("Save a copy.", ("experiment.py", save, f"{save}\n{tamper}"))]
    ws, _ = run_loop(responses, max_runs=1, max_iters=1)
    assert json.loads((ws / "template.json").read_text())["name"] == "tiny"
    if sandbox.probe().landlock_abi:  # blocked: the write fails inside the sandbox
        assert statuses(ws) == [("run_1", "crashed")]
        assert "PermissionError" in kinds(ws, "run_done")[0]["next_prompt"]
    else:  # caught: the guard restores the file and the verdict says so
        assert statuses(ws) == [("run_1", "invalid")]
        assert "protected" in kinds(ws, "verdict")[0]["problems"][-1]


def test_empty_diff_is_not_run_again(run_loop, reply):
    responses = [
        "I believe the template is already optimal.\n",
        set_knob(reply, "Fine, 300 steps.", "steps", "300"),
    ]
    ws, server = run_loop(responses, max_runs=1)
    assert [e["run_name"] for e in kinds(ws, "skip")] == ["run_1"]
    assert [e["attempt"] for e in kinds(ws, "run")] == [2]  # the empty turn counted, never ran
    assert "changed none of" in last_prompt(server, 1)


def test_hang_is_killed_at_timeout_with_no_process_left(run_loop, reply, processes_in):
    responses = [set_knob(reply, "Wait for the data.", "sleep_seconds", "60.0")]
    ws, _ = run_loop(responses, max_runs=1, max_iters=1, timeout=1.5)
    (run,) = kinds(ws, "run")
    assert run["timed_out"] and run["seconds"] < 15
    assert statuses(ws) == [("run_1", "timeout")]
    assert processes_in(ws) == []
    assert kinds(ws, "end")[-1]["reason"] == "run_1 failed 1 times in a row"


def test_replay_of_a_journal_gives_the_same_commits(run_loop, reply):
    responses = [
        set_knob(reply, "More steps.", "steps", "300"),
        set_knob(reply, "Faster learning.", "learning_rate", "0.1"),
    ]
    first, _ = run_loop(responses, max_runs=2)
    replay = {"replay": first / "journal.jsonl", "idea": None, "model": None, "api_base": None}
    again, _ = run_loop([], max_runs=2, **replay)  # the journal names its idea
    assert again != first
    assert Workspace.open(again).patches() == Workspace.open(first).patches()
    assert len(Workspace.open(again).patches()) == 2
    assert statuses(again) == statuses(first) == [("run_1", "ok"), ("run_2", "ok")]
    assert "REPLAY" in (again / "notes.txt").read_text()


def test_no_llm_configured_runs_the_playbook_loudly(run_loop):
    ws, _ = run_loop([], max_runs=1, model=None, api_base=None)
    assert statuses(ws) == [("run_1", "ok")]
    assert kinds(ws, "end")[-1]["reason"] == "replay exhausted"
    assert "No LLM is configured" in (ws / "notes.txt").read_text()
    assert kinds(ws, "start")[0]["llm_source"].startswith("playbook")


def _slow_referee(templates: Path, flag: Path) -> None:
    """The tiny template's referee says so, then sleeps on run_1 while `flag` says so."""
    referee = templates / "tiny" / "referee.py"
    nap = f"float(Path({str(flag)!r}).read_text() or 0) if run_dir.name == 'run_1' else 0"
    nap = f'print("referee: sleeping", flush=True)\ntime.sleep({nap})'
    code = referee.read_text().replace("import sys\n", "import sys\nimport time\n")
    referee.write_text(code.replace("w = np.load(", f"{nap}\nw = np.load(", 1))


# phase -> (the script that sleeps, its log in run_1/, the line it writes before it sleeps)
PHASES = {
    "run": ("experiment.py", "log.txt", "training for 300 steps"),
    "referee": ("referee.py", "referee_log.txt", "referee: sleeping"),
}


@pytest.mark.parametrize("phase", PHASES)
def test_sigkill_leaves_no_process_and_the_same_command_resumes(
    tmp_path, scripted, reply, launch_args, phase
):
    # The run (or its referee) sleeps while the flag file says so; the orchestrator is killed
    # then, and the flag is emptied before the same command runs again. (A file, not an
    # environment variable: the sandbox passes agent and lab code an allow-listed environment.)
    flag = tmp_path / "flag" / "sleep.flag"
    flag.parent.mkdir()
    flag.write_text("60")
    edits = [knob("steps", "300")]
    templates = flag_readable(TEMPLATES, tmp_path / "templates", flag)
    if phase == "run":
        slow = f'float(__import__("pathlib").Path({str(flag)!r}).read_text() or 0)'
        edits.append(knob("sleep_seconds", slow))
    else:
        _slow_referee(templates, flag)
    server = scripted([reply("Sleep when asked.", *edits)])
    model = ("--model", "openai/scripted", "--api-base", server.url)
    launch = launch_args("--idea", "tiny_lr", *model, "--max-runs", "1")
    launch += ["--template-dir", str(templates)]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(launch, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            tree = wait_for(lambda: _asleep(proc.pid, tmp_path / "results", *PHASES[phase]), 90)
        finally:
            proc.kill()  # SIGKILL: no cleanup of any kind
            proc.wait()
    killed = time.monotonic()
    try:  # nothing of the run outlives its orchestrator (what prints nothing would live on)
        wait_for(lambda: not alive(tree), 2.0)
    finally:  # and a failure leaves no sleeper behind
        for pid in alive(tree):
            os.kill(pid, signal.SIGKILL)
    print(f"{phase}: {len(tree)} processes gone {time.monotonic() - killed:.2f} s after kill -9")
    (ws,) = (tmp_path / "results").iterdir()
    before = (ws / "journal.jsonl").read_text()
    assert [e["kind"] for e in kinds(ws, "commit")] == ["commit"] and not kinds(ws, "run_done")

    flag.write_text("")  # the resumed run does not sleep
    done = subprocess.run(launch, cwd=REPO, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    assert f"resuming the unfinished workspace {ws}" in done.stdout.decode()
    assert (ws / "journal.jsonl").read_text().startswith(before)  # nothing recorded was lost
    seqs = [e["seq"] for e in Journal(ws / "journal.jsonl").entries()]
    assert seqs == list(range(len(seqs)))
    assert statuses(ws) == [("run_1", "ok")]
    assert len(kinds(ws, "commit")) == 1  # the edit was not re-requested or re-committed
    assert len(server.requests) == 2  # the opening turn, then the last after-run turn


def _asleep(orchestrator: int, results: Path, script: str, log: str, line: str) -> list[int]:
    """The processes below `orchestrator` once `script` runs there and has written `line` to
    run_1/`log` (it sleeps silently after it, so no broken pipe would end it); else []."""
    tree = descendants(orchestrator)
    running = any([Path(a).name for a in argv(pid)[1:2]] == [script] for pid in tree)
    logs = results.glob(f"*/run_1/{log}")
    return tree if running and any(line in path.read_text() for path in logs) else []


def test_ctrl_c_in_agent_turn_then_resume_asks_again(run_loop, reply, monkeypatch, tmp_path):
    from orchestrator import loop, session
    from orchestrator.agent import coder

    real_turn = coder.Agent.turn

    def interrupted_turn(self, message):
        monkeypatch.setattr(coder.Agent, "turn", real_turn)
        (self.workspace / "experiment.py").write_text("half-applied edit")
        raise KeyboardInterrupt

    monkeypatch.setattr(coder.Agent, "turn", interrupted_turn)
    with pytest.raises(KeyboardInterrupt):
        run_loop([set_knob(reply, "More steps.", "steps", "300")], max_runs=1)
    (ws,) = (tmp_path / "results").iterdir()
    assert [e["kind"] for e in Journal(ws / "journal.jsonl").entries()][-1] == "prompt"

    assert loop.run(session.Settings(resume=ws, live=False, allow_dirty_code=True)) == ws
    prompts = kinds(ws, "prompt")
    assert prompts[0]["text"] == prompts[1]["text"]  # the cut-off turn is asked again
    assert statuses(ws) == [("run_1", "ok")]
    assert json.loads((ws / "run_1/final_info.json").read_text())["training_steps"] == 300


@pytest.mark.parametrize("stream", [False, True])
def test_scripted_server_speaks_openai_to_litellm(scripted, stream):
    import litellm  # after conftest set LITELLM_LOCAL_MODEL_COST_MAP

    server = scripted(["first reply"])
    ask = {"model": "openai/scripted", "api_base": server.url, "api_key": "k", "stream": stream}
    texts = []
    for _ in range(2):
        out = litellm.completion(messages=[{"role": "user", "content": "hi"}], **ask)
        chunks = out if stream else [out]
        texts.append("".join(_text(c, stream) for c in chunks))
    assert texts == ["first reply", END_MARKER]
    assert server.exhausted and server.requests[0]["messages"][0]["content"] == "hi"


def _text(chunk, stream: bool) -> str:
    return (chunk.choices[0].delta.content if stream else chunk.choices[0].message.content) or ""


def test_resume_killed_after_the_closing_commit_just_ends(run_loop, reply):
    from orchestrator import loop, session

    notes = ("notes.txt", "Notes on the tiny experiment.", "300 steps: same loss.")
    responses = [
        set_knob(reply, "More steps.", "steps", "300"),
        reply("Done.", notes, tail="ALL_COMPLETED"),
    ]
    ws, server = run_loop(responses, max_runs=1)
    journal = ws / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["kind"] == "end" and json.loads(lines[-2])["kind"] == "commit"
    journal.write_text("".join(lines[:-1]))  # as if killed right after the commit

    loop.run(session.Settings(resume=ws, live=False, allow_dirty_code=True))
    steps = [e["kind"] for e in Journal(journal).entries()]
    assert steps[-3:] == ["commit", "setup", "end"]  # the resume re-checked the caches only
    assert kinds(ws, "end")[-1]["reason"] == "agent answered ALL_COMPLETED"
    assert len(kinds(ws, "run")) == 1 and len(server.requests) == 2


def test_setup_runs_first_and_the_phase_table_adds_up(run_loop, reply, capfd):
    responses = [
        set_knob(reply, "More steps.", "steps", "300"),
        reply("Done.", tail="ALL_COMPLETED"),
    ]
    ws, _ = run_loop(responses, max_runs=1)
    journal = Journal(ws / "journal.jsonl").entries()
    assert [e["kind"] for e in journal[:2]] == ["start", "setup"]
    out = capfd.readouterr().out
    assert "tiny: no shared caches to build" in out
    assert "Wall time by phase" in out and "experiment runs (1)" in out
    total = float(out.split("total")[-1].split()[1].strip("│"))
    assert total >= int(kinds(ws, "run")[0]["seconds"] * 10) / 10  # shown to 0.1 s


def test_failing_setup_is_one_line_and_creates_no_workspace(tmp_path, run_loop, reply):

    from orchestrator import session

    templates = tmp_path / "templates"
    shutil.copytree(EXPERIMENT.parent, templates / "tiny")
    raw = json.loads((templates / "tiny/template.json").read_text())
    raw["setup_command"] = ["{python}", "-c", "import sys; sys.exit(3)"]
    (templates / "tiny/template.json").write_text(json.dumps(raw))
    with pytest.raises(session.LoopError, match=r"lab setup failed \(exit 3") as err:
        run_loop([reply("unused")], templates_dir=templates)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_the_same_command_again_finds_the_unfinished_workspace(run_loop, reply, tmp_path):
    from orchestrator import session

    ws, _ = run_loop([reply("Done.", tail="ALL_COMPLETED")], max_runs=1)
    results = tmp_path / "results"
    assert session.find_unfinished(results, "tiny_lr") is None  # it ended
    journal = ws / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(line for line in lines if '"kind": "end"' not in line))
    assert session.find_unfinished(results, "tiny_lr") == ws  # as after Ctrl-C
    assert session.find_unfinished(results, "other_idea") is None
