"""Both environments must be consistent: `pip check` passes in .venvs/orch and .venvs/lab."""

from __future__ import annotations

import subprocess

import pytest

from orchestrator import envs


@pytest.mark.parametrize("name", ["orch", "lab"])
def test_pip_check_passes(name):
    python = envs.python_of(name)
    if not python.exists():
        pytest.skip(f"{name} environment absent at {python}: run `python3 -m orchestrator.envs`")
    out = subprocess.run(
        [str(python), "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"pip check in .venvs/{name}:\n{out.stdout}{out.stderr}"


def test_environments_are_split():
    """aider must never be installed beside torch (it downgrades 29 lab packages)."""
    for name, absent in (("orch", "torch"), ("lab", "aider")):
        python = envs.python_of(name)
        if not python.exists():
            pytest.skip(f"{name} environment absent at {python}")
        probe = f"import importlib.util as u; print(u.find_spec({absent!r}) is None)"
        out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "True", f"{absent} is installed in .venvs/{name}"
