"""Shared lab fixtures: one real offline Gemma per test session, tiny texts, a throwaway cache.

The model fixture uses the real cache ($SAELAB_CACHE or ~/.cache/saelab): the first session on
a machine converts the GGUF once (~1 min), later sessions load the bf16 folder in seconds.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from saelab.models import LanguageModel, load_model

# A few sentences of ordinary prose and code: enough to pack several short sequences.
TINY_TEXTS = [
    "The river rose after three days of rain, and the village moved its boats to higher ground. "
    "By morning the fields were lakes, and children counted herons standing in the flooded rows.",
    "def mean(values):\n    total = sum(values)\n    return total / len(values)\n\n"
    "print(mean([1, 2, 3, 4]))\n",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. Plants store "
    "the sugar as starch, which animals later eat and burn for energy.",
    "The committee met on Tuesday to review the budget. Most members agreed to delay the new "
    "library until the roof of the old school had been repaired.",
    "In 1969 two astronauts walked on the Moon while a third orbited above them, waiting to "
    "bring them home.",
]


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    # The CPU is shared; one thread is also faster than two when other processes are busy.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lm() -> LanguageModel:
    """The offline Gemma 3 270M (bf16 where supported), loaded once per session."""
    return load_model()


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    return list(TINY_TEXTS)


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point $SAELAB_CACHE at an empty folder, so activation caches built in a test vanish."""
    root = tmp_path / "saelab-cache"
    monkeypatch.setenv("SAELAB_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def ex() -> ModuleType:
    """The template's experiment.py; a script, not a package module, so imported by path."""
    path = Path(__file__).resolve().parents[2] / "templates" / "temporal_sae" / "experiment.py"
    spec = importlib.util.spec_from_file_location("experiment", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["experiment"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module
