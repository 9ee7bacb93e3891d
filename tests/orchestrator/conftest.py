"""Fixtures for the loop tests: the tiny numpy template, a scripted OpenAI-compatible server, and
a runner for the real loop (real aider, real litellm over HTTP to 127.0.0.1)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.agent.llm import PROVIDER_DEFAULTS
from orchestrator.agent.replay_server import ReplayServer
from tests.orchestrator.helpers import IDEA, IDEAS, REPO, SCRIPTED_MODEL, TEMPLATES, edit_reply


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real provider key may leak into a test, and nothing is written to the real $HOME."""
    for var, _ in PROVIDER_DEFAULTS:
        monkeypatch.delenv(var, raising=False)
    # the lab's shared cache stays where it is (a fresh HOME would rebuild it per test)
    lab_cache = os.environ.get("SAELAB_CACHE") or str(Path.home() / ".cache" / "saelab")
    monkeypatch.setenv("SAELAB_CACHE", lab_cache)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not go online


@pytest.fixture
def launch_args(tmp_path: Path) -> Callable[..., list[str]]:
    """The launch_scientist.py command line for the tiny idea, results under tmp_path."""
    script = REPO / "launch_scientist.py"

    def args(*extra: str) -> list[str]:
        dirs = ["--results-dir", str(tmp_path / "results"), "--template-dir", str(TEMPLATES)]
        ideas = ["--ideas-dir", str(IDEAS), "--allow-dirty-code"]  # a developer's tree is dirty
        return [sys.executable, str(script), *dirs, *ideas, *extra]

    return args


@pytest.fixture
def reply() -> Callable[..., str]:
    return edit_reply


@pytest.fixture
def scripted() -> Iterator[Callable[[list[str]], ReplayServer]]:
    """Start a scripted server for a list of replies; stopped at teardown."""
    servers: list[ReplayServer] = []

    def start(responses: list[str]) -> ReplayServer:
        servers.append(ReplayServer(responses, model="scripted").start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def run_loop(tmp_path: Path, scripted: Callable) -> Callable[..., tuple[Path, ReplayServer]]:
    """Run the real loop on the tiny template against scripted replies (in this process)."""
    from orchestrator import loop, session

    def go(responses: list[str], **overrides: object) -> tuple[Path, ReplayServer]:
        server = scripted(responses)
        settings = session.Settings(
            idea=IDEA,
            model=SCRIPTED_MODEL,
            api_base=server.url,
            results_dir=tmp_path / "results",
            templates_dir=TEMPLATES,
            ideas_dir=IDEAS,
            live=False,
            allow_dirty_code=True,  # a developer's tree is dirty; test_sandbox checks the refusal
        )
        for name, value in overrides.items():
            setattr(settings, name, value)
        return loop.run(settings), server

    return go


@pytest.fixture
def processes_in() -> Callable[[Path], list[int]]:
    """Pids whose working directory is a given directory (a run's leftovers)."""
    return _processes_in


def _processes_in(directory: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(os.readlink(proc / "cwd")) == directory:
                found.append(int(proc.name))
        except OSError:
            continue
    return found
