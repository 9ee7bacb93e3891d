"""Hostile experiments: agent code that tries to reach outside its run directory.

Each test hands the real loop (real aider over the scripted server, the tiny template) one edit
that attacks something, and checks that the attack is blocked or caught with a clear verdict,
that the workspace's records stay intact, that no process is left, and that the loop ends
normally. Where this machine lacks the sandbox, the Landlock/namespace tests are skipped and
test_missing_sandbox_* check that the loop says so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from orchestrator import session
from orchestrator.journal import Journal
from orchestrator.trust import judge, sandbox
from orchestrator.trust.sandbox import Protections
from tests.orchestrator.helpers import REPO, TEMPLATES

EXPERIMENT = TEMPLATES / "tiny" / "experiment.py"
SAVE = next(x for x in EXPERIMENT.read_text().splitlines() if x.startswith("# ---- save"))
ACTIVE = sandbox.probe()
needs_sandbox = pytest.mark.skipif(bool(ACTIVE.missing()), reason=ACTIVE.summary())


def attack(reply, code: str, summary: str = "Add a small improvement.") -> str:
    """An edit that runs `code` at the start of the save section, and changes the learning
    rate so the artifact is new work (the attack is the only thing wrong with the run)."""
    lr = next(x for x in EXPERIMENT.read_text().splitlines() if x.startswith("learning_rate = "))
    return reply(
        summary,
        ("experiment.py", SAVE, f"{SAVE}\n{code}"),
        ("experiment.py", lr, lr.replace("0.05", "0.045")),
    )


def entries(ws: Path, kind: str) -> list[dict]:
    return Journal(ws / "journal.jsonl").entries(kind)


def outcome(ws: Path) -> tuple[str, str]:
    """(status, the prompt sent after the run) of the single run attempt."""
    done = entries(ws, "run_done")
    assert len(done) == 1, done
    return done[0]["status"], done[0]["next_prompt"]


def one_run(run_loop, responses: list[str]) -> Path:
    ws, _ = run_loop(responses, max_runs=1, max_iters=1)
    assert entries(ws, "end"), "the loop must end normally, never with a traceback"
    return ws


@needs_sandbox
@pytest.mark.parametrize(
    ("target", "what"),
    [
        (REPO / "saelab" / "evals" / "core.py", "the lab's code"),
        (REPO / "orchestrator" / "text" / "after_run.j2", "the orchestrator's prompts"),
        (Path("journal.jsonl"), "the journal"),
        (Path(".git") / "HEAD", "the workspace's history"),
        (Path("run_0") / "final_info.json", "the baseline run"),
    ],
)
def test_writes_outside_the_run_dir_are_blocked(run_loop, reply, target, what):
    before = target.read_bytes() if target.is_absolute() else None
    code = f"open({str(target)!r}, 'a').write('# tampered\\n')  # {what}"
    ws = one_run(run_loop, [attack(reply, code)])
    status, feedback = outcome(ws)
    assert status == "crashed" and "PermissionError" in feedback
    if before is not None:
        assert target.read_bytes() == before
    else:
        assert b"# tampered" not in (ws / target).read_bytes().splitlines()
    assert entries(ws, "start") and entries(ws, "run_done")  # the journal kept its history
    assert not (ws / ".git" / "index.lock").exists()


@needs_sandbox
def test_deleting_the_workspace_history_is_blocked(run_loop, reply):
    code = "import shutil; shutil.rmtree('.git', ignore_errors=True); os.remove('journal.jsonl')"
    ws = one_run(run_loop, [attack(reply, f"import os; {code}")])
    assert (ws / ".git" / "HEAD").is_file()
    status, feedback = outcome(ws)  # rmtree ignored its errors; os.remove raised
    assert status == "crashed" and "PermissionError" in feedback
    assert [e["kind"] for e in entries(ws, "start")] == ["start"]


@needs_sandbox
def test_an_earlier_run_cannot_be_rewritten(run_loop, reply):
    first = attack(reply, "pass  # an honest run 1")
    lr = next(x for x in EXPERIMENT.read_text().splitlines() if x.startswith("learning_rate = "))
    second = reply(
        "Improve run 1's numbers in place.",
        (
            "experiment.py",
            "pass  # an honest run 1",
            "open('run_1/final_info.json', 'w').write('{}')",
        ),
        ("experiment.py", lr.replace("0.05", "0.045"), lr.replace("0.05", "0.04")),
    )
    ws, _ = run_loop([first, second], max_runs=2, max_iters=1)
    statuses = [(e["run_name"], e["status"]) for e in entries(ws, "run_done")]
    assert statuses == [("run_1", "ok"), ("run_2", "crashed")]
    assert json.loads((ws / "run_1" / "final_info.json").read_text())["training_steps"] == 200


@needs_sandbox
def test_no_network(run_loop, reply):
    """A server of the orchestrator's on 127.0.0.1 (like the scripted LLM) is out of reach."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
        ws = one_run(run_loop, [attack(reply, code)])
    status, feedback = outcome(ws)
    assert status == "crashed"
    assert "Network is unreachable" in feedback or "PermissionError" in feedback


@needs_sandbox
def test_the_parents_environment_is_out_of_reach(run_loop, reply, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret-in-the-orchestrator")
    monkeypatch.setenv("SOME_OTHER_TOKEN", "tok-secret-too")
    monkeypatch.setenv("ORCHESTRATOR_ONLY_SETTING", "not-for-agent-code")  # no secret's name
    code = (
        "import os, glob, pathlib\n"
        "seen = [open(p, 'rb').read() for p in glob.glob('/proc/*/environ')]\n"
        "print('ENV', dict(os.environ), b''.join(seen), os.getppid())\n"
        # a file in its run dir is not scrubbed on the way out: what it holds is what it saw
        "env = repr(dict(os.environ)).encode() + b''.join(seen)\n"
        "pathlib.Path('run_1/env.txt').write_bytes(env)"
    )
    ws = one_run(run_loop, [attack(reply, code)])
    log = (ws / "run_1" / "log.txt").read_text()
    assert "ENV" in log  # the probe ran
    seen = (ws / "run_1" / "env.txt").read_text(errors="replace") + log
    assert "sk-secret" not in seen and "tok-secret" not in seen
    assert "not-for-agent-code" not in seen  # an allow-list, not a filter on secret names
    assert outcome(ws)[0] == "ok"


@needs_sandbox
def test_a_setsid_daemon_dies_with_its_run(run_loop, reply, processes_in):
    code = (
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time, pathlib; time.sleep(3); "
        'pathlib.Path("run_1/late.txt").write_text("rewritten after the verdict")\'], '
        "start_new_session=True)"
    )
    ws = one_run(run_loop, [attack(reply, code)])
    assert outcome(ws)[0] == "ok"
    time.sleep(4)
    assert not (ws / "run_1" / "late.txt").exists()
    assert processes_in(ws) == []


@needs_sandbox
def test_the_orchestrator_cannot_be_signalled(run_loop, reply):
    code = f"import os, signal; os.kill({os.getpid()}, signal.SIGTERM)"
    ws = one_run(run_loop, [attack(reply, code)])
    status, feedback = outcome(ws)
    assert status == "crashed"
    assert "ProcessLookupError" in feedback or "PermissionError" in feedback


def test_a_run_that_fills_its_quota_is_killed_and_the_workspace_survives(run_loop, reply, tmp_path):
    template = tmp_path / "templates" / "tiny"
    raw = json.loads((TEMPLATES / "tiny" / "template.json").read_text())
    raw["sandbox"] = {"max_run_bytes": 2_000_000}
    _copy_tiny(template, raw)
    code = "open(out_dir / 'fill.bin', 'wb').write(bytes(5_000_000))"
    ws, _ = run_loop([attack(reply, code)], max_runs=1, max_iters=1, templates_dir=template.parent)
    status, feedback = outcome(ws)
    assert status == "crashed"
    assert entries(ws, "end") and (ws / "journal.jsonl").is_file()
    assert not (ws / "run_1" / "fill.bin").exists() or (
        (ws / "run_1" / "fill.bin").stat().st_size <= 2_000_000
    )
    assert "File too large" in feedback or "size cap" in feedback


@needs_sandbox
def test_writes_to_the_shared_cache_land_in_the_workspace_scratch(run_loop, reply, tmp_path):
    shared = tmp_path / "shared-cache"
    shared.mkdir()
    (shared / "trusted.txt").write_text("built by setup")
    template = tmp_path / "templates" / "tiny"
    raw = json.loads((TEMPLATES / "tiny" / "template.json").read_text())
    raw["sandbox"] = {"shared_cache": {"env": "TINY_CACHE", "default": str(shared)}}
    _copy_tiny(template, raw)
    code = (
        "import os, pathlib; root = pathlib.Path(os.environ['TINY_CACHE'])\n"
        "assert (root / 'trusted.txt').read_text() == 'built by setup'\n"
        "(root / 'trusted.txt').write_text('poisoned'); (root / 'mine.txt').write_text('x')"
    )
    ws, _ = run_loop([attack(reply, code)], max_runs=1, max_iters=1, templates_dir=template.parent)
    assert outcome(ws)[0] == "ok"
    assert (shared / "trusted.txt").read_text() == "built by setup"
    assert not (shared / "mine.txt").exists()
    upper = ws / ".scratch" / "cache" / "upper"
    assert (upper / "mine.txt").read_text() == "x"


def test_missing_sandbox_is_said_and_require_sandbox_refuses(run_loop, reply, monkeypatch, capfd):
    monkeypatch.setattr(sandbox, "probe", lambda: Protections(landlock_abi=0, namespaces=False))
    with pytest.raises(session.LoopError, match="--require-sandbox"):
        run_loop([attack(reply, "pass")], max_runs=1, require_sandbox=True)
    ws, _ = run_loop([attack(reply, "pass")], max_runs=1, max_iters=1)
    assert "sandbox INCOMPLETE" in capfd.readouterr().out
    missing = entries(ws, "setup")[0]["sandbox_missing"]
    assert any("Landlock" in gap for gap in missing) and any("namespaces" in gap for gap in missing)


def test_uncommitted_lab_code_is_refused_in_one_line(run_loop, reply, monkeypatch):
    monkeypatch.setattr(session, "dirty_code", lambda project: ["saelab/evals/core.py"])
    with pytest.raises(session.LoopError, match=r"uncommitted changes \(saelab/evals/core.py\)"):
        run_loop([attack(reply, "pass")], max_runs=1, allow_dirty_code=False)


def _copy_tiny(directory: Path, raw: dict) -> None:
    shutil.copytree(TEMPLATES / "tiny", directory)
    (directory / "template.json").write_text(json.dumps(raw))


def test_lab_code_changed_during_a_run_invalidates_it(run_loop, reply, monkeypatch):
    """Whatever changed it (a sandbox gap, a colleague's edit), a run measured by other code
    than the loop started with is not recorded as VALID."""
    versions = iter(range(1000))
    monkeypatch.setattr(judge, "code_digest", lambda project: f"code-{next(versions)}")
    ws = one_run(run_loop, [attack(reply, "pass")])
    status, _ = outcome(ws)
    assert status == "invalid"
    assert any("changed during the run" in p for p in entries(ws, "verdict")[0]["problems"])
