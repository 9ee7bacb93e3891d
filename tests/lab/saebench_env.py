"""The real SAEBench (PyPI sae-bench 0.6.0) in a throwaway environment, .venvs/saebench, for the
cross-check of the lab's core metrics (tests/lab/test_saebench.py). Test-only.

sae-bench 0.6.0 is installed --no-deps, then its requirements without torchvision (the only
torchvision build for torch 2.13 breaks transformer-lens's import; sae-bench's core eval never
uses it), on the CPU torch from this machine's disk. Built on first use (issue 20 measured
136 s and 2.8 GB), cached like .venvs/saelens: a marker written last, changing with the pins.

    outputs = run_saebench(work_dir, inputs)   # sae-bench's and SAELens's numbers, as a dict
"""

from __future__ import annotations

import json
from pathlib import Path

from saelens_env import TORCH, _run, throwaway_python

NAME = "saebench"
REQUIREMENTS = [  # sae-bench 0.6.0's Requires-Dist, torchvision left out
    "beartype>=0.14.1",
    "collectibles>=0.1.5",
    "datasets>=3.0.0,<4.0.0",
    "einops>=0.8.0",
    "jaxtyping>=0.2.25",
    "matplotlib>=3.8.4",
    "numpy>=1.26.4,<2.0",
    "openai>=1.0.0",
    "pandas>=2.1.2",
    "plotly>=5.22.0",
    "pydantic>=2.9.2",
    "sae-probes>=0.4.0,<0.5.0",
    "sae_lens>=6.28.0,<7.0.0",
    "scikit-learn>=1.5.2",
    "seaborn>=0.13.2",
    "tabulate>=0.9.0",
    "tqdm>=4.66.4",
    "transformer-lens>=2.0.0",
]
STEPS = [TORCH, ["--no-deps", "sae-bench==0.6.0"], [*TORCH, *REQUIREMENTS]]
CHECK = Path(__file__).with_name("saebench_check.py")


def saebench_python() -> Path:
    return throwaway_python(NAME, STEPS)


def run_saebench(work_dir: Path, args: list[str]) -> dict:
    """Run saebench_check.py in .venvs/saebench; it prints one JSON object."""
    out = _run([str(saebench_python()), str(CHECK), str(work_dir), *args], "sae-bench", NAME)
    return json.loads(out.stdout.strip().splitlines()[-1])
