"""The real SAELens in a throwaway environment, .venvs/saelens, for the tests that load our
SAELens layout in it. Test-only: nothing the product runs imports SAELens.

sae-lens 6.54.12 pins transformer-lens 3.x, which cannot live beside the lab's pins, so like
orchestrator.envs's two environments it gets its own venv, with a marker written last (an
interrupted build is redone) that changes with the pins. Built on first use: ~65 s on 2 cores
with a cold or warm pip cache, 1.9 GB.

    outputs = run_saelens(work_dir, x_BLD, [sae_dir])   # {sae_dir.name: latents, recon, ...}
"""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
import venv
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from orchestrator.envs import VENVS, SetupError, python_of

NAME = "saelens"
# torch first and alone: the CPU wheel on this machine's disk, so sae-lens finds it installed
# and never pulls a CUDA build
TORCH = ["torch==2.13.0"]
STEPS = [TORCH, ["sae-lens==6.54.12"]]
LOADER = Path(__file__).with_name("saelens_load.py")
PIP_TIMEOUT_S = 900  # a cold build takes ~1 min; a hung download must not stall the suite


def saelens_python() -> Path:
    return throwaway_python(NAME, STEPS)


def throwaway_python(name: str, steps: list[list[str]]) -> Path:
    """Interpreter of .venvs/<name>, built first if missing or stale (one `pip install` per
    step, in order); one builder at a time (worktrees share .venvs)."""
    python = python_of(name)
    marker = VENVS / name / ".scientist-installed"
    pins = [" ".join(step) for step in steps]
    fingerprint = hashlib.sha256(" ".join([*pins, sys.version]).encode()).hexdigest()[:16]
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (marker.exists() and marker.read_text() == fingerprint):
            venv.EnvBuilder(with_pip=True, clear=True).create(VENVS / name)
            for step in steps:
                cmd = [str(python), "-m", "pip", "install", "-q", *step]
                _run(cmd, f"pip install {' '.join(step)}", name)
            marker.write_text(fingerprint)
    return python


def run_saelens(work_dir: Path, x: Tensor, sae_dirs: list[Path]) -> dict[str, dict]:
    """Load each SAE dir with SAELens's SAE.load_from_disk and encode/decode x there.

    Returns {dir name: {"latents", "recon": Tensor, "class", "hook_name": str}}.
    """
    x_path = work_dir / "x.safetensors"
    save_file({"x": x.contiguous()}, x_path)
    cmd = [str(saelens_python()), str(LOADER), str(x_path), str(work_dir), *map(str, sae_dirs)]
    _run(cmd, "loading the SAEs in sae-lens", NAME)
    outputs = {}
    for sae_dir in sae_dirs:
        with safe_open(work_dir / f"{sae_dir.name}.out.safetensors", framework="pt") as f:
            outputs[sae_dir.name] = {**f.metadata(), **{k: f.get_tensor(k) for k in f.keys()}}
    return outputs


def _run(cmd: list[str], what: str, env_name: str) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    if out.returncode != 0:
        raise SetupError(f"{what} failed in .venvs/{env_name}:\n{out.stdout}{out.stderr}")
    return out
