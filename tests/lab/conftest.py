"""Shared lab fixtures: one real offline Gemma per test session, tiny texts, a throwaway cache,
and a tiny random Gemma 2 saved in hub format (the GPU user's path, in seconds on a CPU).

The model fixture uses the real cache ($SAELAB_CACHE or ~/.cache/saelab): the first session on
a machine converts the GGUF once (~1 min), later sessions load the bf16 folder in seconds.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

from saelab.cache import cache_dir, sealed_dir
from saelab.data import BUILD_VERSION, load_corpus
from saelab.models import LanguageModel, load_model, offline_model_dir

OFFLINE_DATA = f"offline-v{BUILD_VERSION}"

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
    """Point $SAELAB_CACHE at an empty folder, so activation caches built in a test vanish (the
    sealed tree defaults to its sibling, `<root>-sealed`, as empty)."""
    root = tmp_path / "saelab-cache"
    monkeypatch.setenv("SAELAB_CACHE", str(root))
    return root


@pytest.fixture
def blocked_sealed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the sealed tree unreachable, as agent code's sandbox does: its root lies under a
    regular file, so nothing below it can be listed, read or created (root or not)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SAELAB_SEALED", str(blocker / "sealed"))
    return blocker / "sealed"


@pytest.fixture(scope="session")
def ex() -> ModuleType:
    """The template's experiment.py; a script, not a package module, so imported by path."""
    path = Path(__file__).resolve().parents[2] / "templates" / "temporal_sae" / "experiment.py"
    spec = importlib.util.spec_from_file_location("experiment", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["experiment"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def hub_gemma2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Gemma2ForCausalLM (4 layers, hidden 64) with the offline Gemma tokenizer, saved
    in hub format: what `google/gemma-2-2b` is to the lab, at 65 MB. Load it by its folder."""
    folder = tmp_path_factory.mktemp("hub") / "tiny-gemma-2"
    tokenizer = AutoTokenizer.from_pretrained(offline_model_dir())
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=16,  # shorter than the sequences, so local and global layers differ
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",  # Gemma 2's attention soft-capping has no sdpa kernel
    )
    torch.manual_seed(0)
    Gemma2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hub_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Offline hub mode and $SAELAB_CACHE in a fresh folder (and its sealed sibling), for one
    test module; the built offline corpora and eval sets are linked in (building them takes
    minutes and a 358 MB download). The corpora file by file: no migration can move anything
    out of the real training tree through a link."""
    data, sealed_data = cache_dir("data", OFFLINE_DATA), sealed_dir("data")
    load_corpus()  # built (or found) before the links are made
    root = tmp_path_factory.mktemp("saelab-cache")
    (root / "data" / OFFLINE_DATA).mkdir(parents=True)
    for corpus in data.glob("corpus-*"):
        (root / "data" / OFFLINE_DATA / corpus.name).symlink_to(corpus)
    sealed = Path(f"{root}-sealed")
    sealed.mkdir()
    (sealed / "data").symlink_to(sealed_data, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAELAB_CACHE", str(root))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield root
