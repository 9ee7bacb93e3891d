"""A hosted LLM that fails: config errors before any setup, provider errors during the loop
(refused, transient, context window), the spend cap, the exit codes, and the keys sent.

Each loop runs the real aider + litellm against the scripted server, which answers Faults."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from orchestrator import loop, session
from orchestrator.agent import coder, llm
from orchestrator.agent.replay_server import CONTEXT_LENGTH, Fault
from orchestrator.journal import Journal

STEPS = "steps = {}  # gradient-descent steps (0 means no training at all)"
FAST = llm.RetryPolicy(tries=4, first_delay=0.01, max_delay=0.02, max_wait=2.0, request_timeout=1)
LOSS_LINE = "loss = float(np.mean((x @ w - y) ** 2))"
CRASH_LINE = "loss = float(np.mean((x @ w - y) ** 2)) / int(steps * 0)"


@pytest.fixture
def more_steps(reply) -> str:
    return reply("Train for 300 steps.", ("experiment.py", STEPS.format(200), STEPS.format(300)))


def journal(results: Path) -> list[dict]:
    (ws,) = results.iterdir()
    return Journal(ws / "journal.jsonl").entries()


def kinds(entries: list[dict]) -> list[str]:
    return [e["kind"] for e in entries]


def statuses(entries: list[dict]) -> list[str]:
    return [e["status"] for e in entries if e["kind"] == "run_done"]


# ---- before any setup ------------------------------------------------------------------------


def test_a_missing_key_is_one_line_and_no_setup(launch_args, tmp_path):
    done = subprocess.run(
        launch_args("--idea", "tiny_lr", "--model", "openai/gpt-4.1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "OPENAI_API_KEY" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "no shared caches" not in done.stdout  # the lab setup never ran
    assert not (tmp_path / "results").exists()


def test_a_provider_key_in_the_environment_passes_litellms_check(monkeypatch):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "k")
    choice = llm.choose("tiny_lr", Path("unused"))
    assert choice.model.startswith("deepseek/")
    llm.preflight(choice)
    monkeypatch.delenv("DEEPSEEK_API_KEY")
    with pytest.raises(llm.LLMError, match="DEEPSEEK_API_KEY unset"):
        llm.preflight(choice)


def test_an_api_base_that_does_not_answer_is_one_line(monkeypatch):
    monkeypatch.setattr(llm, "PROBE_SECONDS", 0.3)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        choice = llm.LLMChoice("openai/q", "--model", f"http://127.0.0.1:{port}/v1", "k")
        with pytest.raises(llm.LLMError, match="no answer from .*/v1/models within") as err:
            llm.preflight(choice)
    assert "\n" not in str(err.value)
    with pytest.raises(llm.LLMError, match="Connection refused"):
        llm.preflight(choice)  # nothing listens there now


def test_api_base_never_gets_a_provider_key(run_loop, monkeypatch, more_steps):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-provider-secret")
    _, server = run_loop([more_steps], max_runs=1)
    assert server.keys and set(server.keys) == {f"Bearer {llm.LOCAL_API_KEY}"}
    monkeypatch.setenv(llm.API_KEY_VAR, "sk-for-this-server")
    _, server = run_loop([more_steps], max_runs=1)
    assert set(server.keys) == {"Bearer sk-for-this-server"}


# ---- during the loop ---------------------------------------------------------------------------


def test_401_stops_at_once_then_resume_continues(scripted, launch_args, tmp_path, more_steps):
    server = scripted([Fault(401, "Incorrect API key provided"), more_steps])
    model = ("--model", "openai/scripted", "--api-base", server.url, "--max-runs", "1")
    first = subprocess.run(
        launch_args("--idea", "tiny_lr", *model), capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 2, first.stdout[-2000:] + first.stderr[-2000:]
    assert "Traceback" not in first.stdout + first.stderr
    assert "rejected the API key" in first.stdout and "--resume" in first.stdout
    assert len(server.requests) == 1  # a refused key is not retried, by us or by aider
    entries = journal(tmp_path / "results")
    assert kinds(entries)[-2:] == ["prompt", "halt"] and "end" not in kinds(entries)

    again = subprocess.run(  # the user fixed the key; the same command resumes
        launch_args("--idea", "tiny_lr", *model), capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert statuses(journal(tmp_path / "results")) == ["ok"]


def test_rate_limit_and_5xx_are_retried_with_backoff(run_loop, more_steps):
    rate_limited = Fault(429, "slow down", headers={"Retry-After": "0.3"})
    ws, server = run_loop([rate_limited, Fault(500), Fault(503), more_steps], retry=FAST)
    entries = Journal(ws / "journal.jsonl").entries()
    retries = [e for e in entries if e["kind"] == "llm_retry"]
    assert [r["error"].split(":")[0] for r in retries] == [
        "RateLimitError 429",
        "InternalServerError 500",
        "ServiceUnavailableError 503",
    ]
    assert retries[0]["wait"] == 0.3  # the server's Retry-After, not our 0.01 s back-off
    assert all(0.005 <= r["wait"] <= 0.02 for r in retries[1:])
    assert kinds(entries).count("prompt") == 2  # the retries stayed inside the first turn
    assert statuses(entries) == ["ok"] and len(server.requests) == 5


def test_a_hang_past_the_client_timeout_is_retried(run_loop, more_steps):
    patient = llm.RetryPolicy(first_delay=0.01, max_delay=0.02, request_timeout=0.5)
    ws, _ = run_loop([Fault(hang=3.0), more_steps], retry=patient, max_runs=1)
    entries = Journal(ws / "journal.jsonl").entries()
    (retry,) = [e for e in entries if e["kind"] == "llm_retry"]
    assert retry["error"].startswith("Timeout 408")
    assert statuses(entries) == ["ok"]


@pytest.mark.parametrize(
    ("faults", "requests"),
    [
        ([Fault(500)] * 6, 4),  # FAST allows 4 tries
        ([Fault(429, headers={"Retry-After": "100"})], 1),  # past max_wait: no point waiting
        ([Fault(400, "unsupported parameter")], 1),  # no retry fixes a bad request
    ],
)
def test_provider_down_ends_the_loop_resumably(run_loop, tmp_path, faults, requests):
    with pytest.raises(llm.ProviderDown) as err:
        run_loop(faults, retry=FAST)
    assert "\n" not in str(err.value)
    entries = journal(tmp_path / "results")
    assert kinds(entries)[-1] == "halt" and "end" not in kinds(entries)
    assert kinds(entries).count("llm_retry") == requests - 1
    assert session.find_unfinished(tmp_path / "results", "tiny_lr") is not None


def test_context_window_error_shortens_the_prompt_once(run_loop, reply, monkeypatch):
    monkeypatch.setattr(coder, "LOG_LINES", 1)
    crash = reply("Normalise the loss.", ("experiment.py", LOSS_LINE, CRASH_LINE))
    fix = reply(  # and a new step size: undoing alone would hand in run_0's weights again
        "Undo the division by zero.",
        ("experiment.py", CRASH_LINE, LOSS_LINE),
        ("experiment.py", "learning_rate = 0.05  # step size", "learning_rate = 0.04  # step size"),
    )
    ws, server = run_loop([crash, CONTEXT_LENGTH, fix], max_runs=1)
    entries = Journal(ws / "journal.jsonl").entries()
    assert statuses(entries) == ["crashed", "ok"]
    assert [e.get("shortened") for e in entries if e["kind"] == "llm_retry"] == [True]
    full, short = server.requests[1]["messages"], server.requests[2]["messages"]
    assert "ZeroDivisionError" in full[-1]["content"] and "lines cut" not in full[-1]["content"]
    assert "ZeroDivisionError" in short[-1]["content"] and "lines cut" in short[-1]["content"]
    assert len(short) < len(full)  # the older chat was dropped too


def test_context_window_error_twice_ends_the_loop(run_loop):
    with pytest.raises(llm.ProviderDown, match="still too long"):
        run_loop([CONTEXT_LENGTH, CONTEXT_LENGTH], max_runs=1)


# ---- spend -------------------------------------------------------------------------------------


def test_spend_cap_stops_before_the_call_and_a_higher_cap_resumes(run_loop, more_steps, tmp_path):
    priced = {"model": "openai/gpt-4.1", "max_runs": 1}  # litellm's price map has it
    ws, server = run_loop([more_steps], max_cost=0.001, **priced)
    entries = Journal(ws / "journal.jsonl").entries()
    assert server.requests == [] and kinds(entries)[-2:] == ["prompt", "halt"]
    assert "--max-cost" in entries[-1]["reason"] and "end" not in kinds(entries)
    assert (ws / "notes.txt").is_file()  # a clean stop writes the report

    assert (
        loop.run(session.Settings(resume=ws, max_cost=1.0, live=False, allow_dirty_code=True)) == ws
    )
    entries = Journal(ws / "journal.jsonl").entries()
    assert statuses(entries) == ["ok"] and kinds(entries)[-1] == "end"
    calls = [e for e in entries if e["kind"] == "llm_call"]
    assert calls and all(0 < c["cost"] < 1.0 for c in calls)
    notes = (ws / "notes.txt").read_text()
    turns = [line.strip() for line in notes.splitlines() if line.strip().startswith("turn ")]
    assert turns[0] == "turn 1 (run_1): 0 calls, 0 prompt + 0 completion tokens, $0.0000"
    assert turns[1].startswith("turn 2 (run_1): 1 calls,") and f"${calls[0]['cost']:.4f}" in notes


# ---- exit codes, and the guard's notice -----------------------------------------------------


def test_a_loop_without_a_valid_run_exits_1(scripted, launch_args):
    server = scripted(["The template is fine as it is.\n"])
    model = ("--model", "openai/scripted", "--api-base", server.url)
    done = subprocess.run(
        launch_args("--idea", "tiny_lr", *model, "--max-runs", "1", "--max-iters", "1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "run_1 failed 1 times in a row" in done.stdout


def test_the_guard_notice_goes_out_once_after_an_empty_turn(run_loop, reply, more_steps):
    protected = ("template.json", '  "timeout_seconds": 30,', '  "timeout_seconds": 3000,')
    _, server = run_loop([reply("A longer timeout.", protected), more_steps], max_runs=1)
    told = ["restored" in r["messages"][-1]["content"] for r in server.requests]
    assert told == [False, True, False]


def test_help_shows_the_spend_cap_default_and_exits_0(launch_args):
    done = subprocess.run(launch_args("--help"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert f"(default: {session.MAX_COST})" in " ".join(done.stdout.split())
