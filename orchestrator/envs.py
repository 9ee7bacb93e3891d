"""The two Python environments, built by one command.

aider-chat pins every dependency with `==` and, installed beside torch + transformers +
transformer-lens, downgrades 29 packages until transformer-lens stops importing. So the
orchestrator (aider, litellm, gitpython, jinja2, rich) and the lab (torch, transformers, saelab,
experiments) live in two virtual environments under `.venvs/`, each an editable install of this
repository with one extra of pyproject.toml. The runner starts experiments with `lab_python()`.

This module must import with the standard library alone: it runs before either venv exists.

    python3 -m orchestrator.envs          # build or update both, then `pip check` each
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STARTED_AT = "SCIENTIST_STARTED_AT"  # epoch seconds the command began, set before re-exec
ENV_SECONDS = "SCIENTIST_ENV_SECONDS"  # seconds spent checking or building the environments
VENVS = Path(os.environ.get("SCIENTIST_VENVS", REPO / ".venvs"))
EXTRAS = {"orch": "orch", "lab": "lab"}  # venv name -> pyproject extra
PACKAGES = ("orchestrator", "saelab")  # what the editable installs map (pyproject packages.find)
REEXEC_FLAG = "SCIENTIST_IN_ORCH_VENV"
SUPPORTED_PYTHON = (3, 11)  # the CPU torch wheel on these machines is built for 3.11


class SetupError(RuntimeError):
    """A setup step failed; the message says which and what to do."""


def python_of(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def lab_python() -> str:
    """Interpreter that runs experiments (torch, transformers, saelab)."""
    override = os.environ.get("SCIENTIST_LAB_PYTHON")
    path = Path(override) if override else python_of("lab")
    if not path.exists():
        raise SetupError(f"lab environment missing at {path}: run `python3 -m orchestrator.envs`")
    return str(path)


def _fingerprint(extra: str) -> str:
    """Changes whenever the pins or the interpreter change, so a stale venv is reinstalled."""
    text = (REPO / "pyproject.toml").read_text() + extra + sys.version
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _marker(name: str) -> Path:
    return VENVS / name / ".scientist-installed"


def is_ready(name: str) -> bool:
    marker = _marker(name)
    return marker.exists() and marker.read_text().strip() == _fingerprint(EXTRAS[name])


def _run(cmd: list[str], what: str) -> None:
    print(f"  $ {' '.join(cmd)}", flush=True)
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        raise SetupError(f"{what} failed (output above); fix it and run the command again")


def build(name: str) -> None:
    """Create venv `name` and install the repo with its extra; the marker is written last, so
    an interrupted install is redone on the next call rather than trusted."""
    extra = EXTRAS[name]
    python = python_of(name)
    start = time.monotonic()
    print(f"[setup] environment '{name}' ({VENVS / name})", flush=True)
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(VENVS / name)
    _run(
        [str(python), "-m", "pip", "install", "--progress-bar", "on", "-e", f".[{extra}]"],
        f"installing the '{name}' environment",
    )
    _run([str(python), "-m", "pip", "check"], f"`pip check` of the '{name}' environment")
    _marker(name).write_text(_fingerprint(extra))
    print(f"[setup] '{name}' ready in {time.monotonic() - start:.0f} s", flush=True)


def ensure() -> None:
    """Build whichever environment is missing or stale; a no-op when both are ready."""
    if sys.version_info[:2] != SUPPORTED_PYTHON:
        wanted = ".".join(map(str, SUPPORTED_PYTHON))
        raise SetupError(
            f"Python {wanted} is required (found {sys.version.split()[0]}): run with python{wanted}"
        )
    for name in EXTRAS:
        if not is_ready(name):
            build(name)


def ensure_and_reexec() -> None:
    """Make both environments, then restart the current command inside the orchestrator's."""
    target = python_of("orch")
    in_orch = Path(sys.prefix).resolve() == (VENVS / "orch").resolve()
    if os.environ.get(REEXEC_FLAG) == "1" or in_orch:
        return
    start = time.time()
    try:
        ensure()
    except SetupError as err:
        sys.exit(f"error: {err}")
    os.environ[REEXEC_FLAG] = "1"
    os.environ[STARTED_AT] = str(start)  # the loop's wall-time table counts from here
    os.environ[ENV_SECONDS] = str(time.time() - start)
    os.execv(str(target), [str(target), *sys.argv])


if __name__ == "__main__":
    try:
        ensure()
    except SetupError as err:
        sys.exit(f"error: {err}")
    print("[setup] both environments ready:", python_of("orch"), python_of("lab"))
