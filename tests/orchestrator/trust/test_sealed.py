"""Hostile experiments, second pass: agent code that reads what it must not (the user's files,
the lab's sealed evaluation data), prints secrets, or allocates without bound.

As in test_sandbox.py, each loop test hands the real loop (real aider over the scripted server,
the tiny template) one edit that attacks, and checks that the attack is blocked with a clear
message, that no secret reaches the workspace, the journal or the prompt, and that the loop
ends normally. Landlock tests are skipped where this machine lacks the sandbox.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from orchestrator import prompts
from orchestrator.templates import TemplateError, load_template
from orchestrator.trust.redact import MARK, run_files
from orchestrator.trust.runner import run_sandboxed
from orchestrator.trust.sandbox import Protections, default_memory_cap
from orchestrator.trust.validate import validate_run
from tests.orchestrator.helpers import TEMPLATES
from tests.orchestrator.trust.test_sandbox import (
    _copy_tiny,
    attack,
    entries,
    needs_sandbox,
    one_run,
    outcome,
)

SEALED_NOTE = "are the lab's and are sealed"
# a provider-shaped key the run assembles at run time, so the agent's edit never holds it whole
KEY_HALVES = ("sk-ant-api03-", "Zx8Qw2Lm4Np6Rt0Vb3Kc7Hd9")


def tiny_with(tmp_path: Path, sandbox: dict) -> Path:
    """The tiny template with a `sandbox` block; returns the templates dir holding it."""
    raw = json.loads((TEMPLATES / "tiny" / "template.json").read_text())
    raw["sandbox"] = sandbox
    _copy_tiny(tmp_path / "templates" / "tiny", raw)
    return tmp_path / "templates"


def files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@needs_sandbox
def test_a_credential_in_the_users_home_is_unreadable(run_loop, reply, tmp_path):
    """HOME is a fake home here (conftest): the run reaches for a real-looking credential."""
    secret = "credential-value-7f3a9c"
    credentials = Path.home() / ".config" / "app" / "credentials"
    credentials.parent.mkdir(parents=True)
    credentials.write_text(f"token = {secret}\n")
    code = f"print('STOLEN', open({str(credentials)!r}).read())"
    ws = one_run(run_loop, [attack(reply, code)])
    status, feedback = outcome(ws)
    assert status == "crashed" and "PermissionError" in feedback
    assert "not the home directory" in feedback  # the agent is told what it may read
    assert files_holding(ws, secret) == []


@needs_sandbox
def test_the_sealed_tree_is_unreadable_and_the_agent_is_told(
    run_loop, reply, tmp_path, monkeypatch
):
    sealed = tmp_path / "lab-sealed"
    (sealed / "evals").mkdir(parents=True)
    (sealed / "evals" / "heldout.txt").write_text("held-out answer 42")
    monkeypatch.setenv("SAELAB_SEALED", str(sealed))
    templates = tiny_with(
        tmp_path, {"referee_readable": [{"env": "SAELAB_SEALED", "default": "/nowhere"}]}
    )
    code = f"print(open({str(sealed / 'evals' / 'heldout.txt')!r}).read())"
    ws, _ = run_loop([attack(reply, code)], max_runs=1, max_iters=1, templates_dir=templates)
    status, feedback = outcome(ws)
    assert status == "crashed" and "PermissionError" in feedback and SEALED_NOTE in feedback
    assert files_holding(ws, "held-out answer 42") == []


@needs_sandbox
def test_only_the_referee_reads_the_sealed_tree(tmp_path, monkeypatch):
    """... and a small memory cap meant for agent code does not starve the referee."""
    sealed = tmp_path / "lab-sealed"
    sealed.mkdir()
    (sealed / "items.txt").write_text("eval items")
    monkeypatch.setenv("SAELAB_SEALED", str(sealed))
    readable = [{"env": "SAELAB_SEALED", "default": "/nowhere"}]
    tiny_with(tmp_path, {"referee_readable": readable, "max_memory_gib": 1})
    spec = load_template(tmp_path / "templates" / "tiny")
    code = "import os; print(open(os.environ.get('SAELAB_SEALED', '/x') + '/items.txt').read())"
    seen = {}
    for referee in (False, True):
        out = tmp_path / f"out-{referee}"
        out.mkdir()
        result = run_sandboxed(
            [sys.executable, "-c", code], spec, cwd=out, writable=out, scratch=tmp_path / "s",
            sealed=referee, log_path=out / "log.txt", timeout=30, live=False,
        )  # fmt: skip
        seen[referee] = (result.returncode, result.stdout_tail.strip(), result.memory_cap)
    assert seen[True] == (0, "eval items", max(2**30, default_memory_cap()))
    assert seen[False][0] != 0 and seen[False][2] == 2**30


def test_secrets_printed_by_the_run_are_redacted_and_journaled(
    run_loop, reply, tmp_path, monkeypatch
):
    env_secret = "plain-secret-Value-00112233"
    monkeypatch.setenv("SOME_SERVICE_TOKEN", env_secret)
    code = (
        f"import sys; key = {KEY_HALVES[0]!r} + {KEY_HALVES[1]!r}\n"
        f"env_secret = {env_secret[:10]!r} + {env_secret[10:]!r}\n"
        "print('key', key, 'token', env_secret); print('again', key, file=sys.stderr)\n"
        "raise SystemExit(3)"
    )
    ws = one_run(run_loop, [attack(reply, code)])
    status, feedback = outcome(ws)
    assert status == "crashed" and MARK.decode() in feedback
    assert entries(ws, "run")[0]["redacted"] == 3  # the log's three secrets
    for secret in ("".join(KEY_HALVES), env_secret):
        assert secret not in feedback
        assert files_holding(ws, secret) == []  # log.txt, journal, notes: nowhere


def test_result_file_strings_and_file_names_are_redacted(tmp_path, monkeypatch):
    """Strings in the result file reach the prompt as facts and as validation problems; the
    run dir's file names reach the journal's verdict."""
    secret = "hf-plain-token-value-99"
    monkeypatch.setenv("HF_TOKEN", secret)
    run_dir = tmp_path / "run_1"
    run_dir.mkdir()
    github_token = "ghp_" + "A1b2C3d4E5f6G7h8I9j0"  # from nowhere in particular
    info = {"training_steps": 3, "final_loss": 0.1, "r2": secret, "model": github_token}
    (run_dir / "final_info.json").write_text(json.dumps(info))
    (run_dir / "referee.json").write_text("{}")
    (run_dir / f"{github_token}.txt").write_text("exfiltrated through a name")
    spec = load_template(TEMPLATES / "tiny")
    shown = prompts.facts(run_dir, spec) + " ".join(validate_run(run_dir, spec).problems)
    assert shown.count(MARK.decode()) >= 3  # both facts, and r2's problems
    assert secret not in shown and github_token not in shown
    assert f"{MARK.decode()}.txt" in run_files(run_dir)


def test_a_memory_hog_is_stopped_at_its_cap_and_the_loop_goes_on(run_loop, reply, tmp_path):
    """Twice the 1 GiB cap, in 256 MB steps (each touched, so the pages are real)."""
    templates = tiny_with(tmp_path, {"max_memory_gib": 1})
    code = "hog = [bytearray(256 * 2**20) for _ in range(8)]"
    ws, _ = run_loop([attack(reply, code)], max_runs=1, max_iters=1, templates_dir=templates)
    status, feedback = outcome(ws)
    assert status == "crashed" and "killed: over its memory cap of 1 GiB" in feedback
    assert "MemoryError" in feedback and "may allocate at most 1 GiB" in feedback
    assert entries(ws, "end")


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"readable": "/data"}, "'sandbox.readable' must be a list"),
        ({"readable": ["data"]}, "'sandbox.readable[0]' names 'data'; use an absolute path"),
        ({"referee_readable": [{"env": "X"}]}, "'sandbox.referee_readable[0]' must be a path or"),
        ({"max_memory_gib": 0}, "'sandbox.max_memory_gib' must be a positive number"),
    ],
)
def test_bad_sandbox_settings_fail_in_one_line(tmp_path, block, message):
    tiny_with(tmp_path, block)
    with pytest.raises(TemplateError, match=re.escape(message)) as caught:
        load_template(tmp_path / "templates" / "tiny")
    assert "\n" not in str(caught.value)


def test_without_landlock_the_sandbox_says_reads_are_not_sealed():
    (gap,) = Protections(landlock_abi=0, namespaces=True).missing()
    assert "read everywhere" in gap and "sealed" in gap
