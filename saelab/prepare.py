"""Build the lab's shared caches once, before any run: model, data, activations, eval cache.

    python -m saelab.prepare                  # the cpu profile: Gemma 3 270M, layer 6, 1.1M tokens
    python -m saelab.prepare --profile gpu    # Gemma-2-2B, layer 12, 4M tokens (~18 GB)
    python -m saelab.prepare --profile gpu --model_name /models/gemma-2-2b   # a flag overrides

A profile (saelab.profiles) names the model, layer, corpus, sequence length and cache size;
an explicit flag overrides its value. Each step is skipped when its cache entry exists and is
whole (the entries are written atomically, so an interrupted build is redone, never trusted).
Prints one line per step with its seconds; a problem the user can fix is one line on stderr and
exit code 2.

Two trees (saelab.cache): the training tree (`$SAELAB_CACHE`: weights, training corpora, the
activation cache's training rows) and the sealed tree (`$SAELAB_SEALED`, default
`<cache root>-sealed`: the held-out rows, the eval sets and their sources, the eval cache).
A cache built before the split is migrated in place, cheaply: the eval files are moved (a
rename on one filesystem) and the activation entry is cut in two by copying its rows (no
model forward), then removed from the training tree.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from saelab.activations import ACTS_DTYPE, TOKENS_DTYPE, harvest_split, is_cached
from saelab.cache import SaelabError, cache_root, sealed_root
from saelab.data import BUILD_VERSION, load_corpus, probing_tasks, unlearning_questions
from saelab.evals import warm_eval_cache
from saelab.evals.common import EvalConfig
from saelab.models import OFFLINE_MODEL, load_model, model_width
from saelab.profiles import PROFILES, profile

console = Console(stderr=True)
OFFLINE_WEIGHTS_BYTES = 800_000_000  # the GGUF (0.24 GB) and its bf16 conversion (0.54 GB)
DATA_BYTES = 600_000_000  # the offline corpora and eval sets (0.54 GB built)
SETTINGS = ("model_name", "layer", "corpus", "seq_len", "cache_tokens")  # a profile's, overridable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", help=f"one of {', '.join(PROFILES)}")
    parser.add_argument("--model_name", help="a saelab model, hub id or local folder")
    parser.add_argument("--layer", type=int)
    parser.add_argument("--corpus")
    parser.add_argument("--seq_len", type=int)
    parser.add_argument("--cache_tokens", type=int)
    args = parser.parse_args(argv)
    try:
        lab = profile(args.profile)
        given = {name: getattr(args, name) for name in SETTINGS}
        settings = {name: getattr(lab, name) if v is None else v for name, v in given.items()}
        prepare(**settings, eval_config=lab.eval_config(), test_fraction=lab.test_fraction)
    except (SaelabError, ValueError) as err:
        console.print(f"[red]error:[/] {err}", highlight=False)
        return 2
    return 0


def prepare(
    model_name: str,
    layer: int,
    corpus: str,
    seq_len: int,
    cache_tokens: int,
    eval_config: EvalConfig | None = None,
    test_fraction: float = 0.05,
) -> dict:
    """Build (or find) every shared cache experiments and the referee read; returns seconds
    per step. Agent code and the referee run sandboxed, unable to write the shared cache, so
    what they read must be built here."""
    need = disk_needed(model_name, layer, corpus, seq_len, cache_tokens, eval_config)
    check_disk_space(need)
    seconds: dict[str, float] = {}
    model = _step(seconds, "model", f"{model_name} weights", lambda: _model(model_name))
    moved = _step(seconds, "sealed", "eval data kept apart from training data", seal_old_cache)
    _step(seconds, "data", "offline corpora and eval sets", lambda: _data(corpus))
    _, test = _step(
        seconds,
        "activations",
        f"activation cache: layer {layer}, {cache_tokens:,} tokens, {test_fraction:g} held out",
        lambda: harvest_split(model, layer, corpus, seq_len, cache_tokens, test_fraction),
    )
    config = eval_config or EvalConfig()
    _step(
        seconds,
        "evals",
        "the referee's eval cache (residuals, clean losses and answers of its fixed texts)",
        lambda: warm_eval_cache(model, layer, test, config),
    )
    total = sum(seconds.values())
    console.print(
        f"[bold]lab caches ready[/] in {total:.0f} s: training data under {cache_root()}, "
        f"sealed eval data under {sealed_root()}" + (f" ({moved} moved there)" if moved else "")
    )
    return seconds


def seal_old_cache() -> int:
    """Move what a cache from before the split keeps in the training tree and is eval data
    (the eval cache, the eval sets and the sources they come from) into the sealed tree;
    returns how many entries moved. The training corpora stay."""
    train, sealed = cache_root(), sealed_root()
    data = Path("data") / f"offline-v{BUILD_VERSION}"
    moves = [Path("evals"), Path("data") / "downloads"]
    if (train / data).is_dir():
        moves += [data / p.name for p in (train / data).iterdir() if "corpus-" not in p.name]
    return sum(_move(train / part, sealed / part) for part in moves)


def _move(src: Path, dst: Path) -> int:
    """Move `src` to `dst`, merging into a folder already there; returns entries moved."""
    if not src.exists():
        return 0
    if src.is_dir() and dst.is_dir():
        moved = sum(_move(child, dst / child.name) for child in list(src.iterdir()))
        src.rmdir()
        return moved
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_dir():
        shutil.rmtree(dst)
    shutil.move(src, dst)  # a rename on one filesystem; os.replace semantics for files
    return 1


def disk_needed(
    model_name: str,
    layer: int,
    corpus: str,
    seq_len: int,
    cache_tokens: int,
    eval_config: EvalConfig | None = None,
) -> dict[str, int]:
    """Bytes the lab caches need under cache_root(), by what needs them, read from the model's
    config before any weights: the activation cache (0 once built), the eval cache the runs
    fill, the offline weights and data. Hub weights go to the Hugging Face cache instead."""
    d_model = model_width(model_name)
    built = is_cached(model_name, layer, corpus, seq_len, cache_tokens)
    token_bytes = d_model * ACTS_DTYPE.itemsize + TOKENS_DTYPE.itemsize
    acts = f"activations ({cache_tokens:,} tokens x d_model {d_model} x 2 bytes)"
    eval_tokens = (eval_config or EvalConfig()).stored_tokens(seq_len)
    return {
        acts: 0 if built else cache_tokens * token_bytes,
        "eval cache": eval_tokens * d_model * 2,  # residuals in the model's bf16
        "offline weights": OFFLINE_WEIGHTS_BYTES if model_name == OFFLINE_MODEL else 0,
        "corpora": DATA_BYTES,
    }


def check_disk_space(need: dict[str, int]) -> None:
    """Refuse to start a build that would fill the disk half-way through; `need` is bytes by
    what needs them, as disk_needed gives it."""
    root = cache_root()
    free, total = shutil.disk_usage(root).free, sum(need.values())
    if free < total:
        parts = ", ".join(f"{what} {n / 1e9:.1f} GB" for what, n in need.items() if n)
        raise SaelabError(
            f"only {free / 1e9:.1f} GB free under {root}; the lab caches need {total / 1e9:.1f} GB "
            f"({parts}): free space there or set SAELAB_CACHE to a bigger disk"
        )


def _model(model_name: str):  # noqa: ANN202 - a LanguageModel
    # the first load converts the GGUF (~45 s on 2 cores) and shows nothing else meanwhile
    with console.status(f"loading {model_name}; the first time converts the weights once"):
        return load_model(model_name)


def _data(corpus: str) -> None:
    load_corpus(corpus)
    probing_tasks()
    for domain in ("forget", "retain"):
        unlearning_questions(domain)


def _step(seconds: dict, name: str, what: str, build: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = build()  # each build shows its own progress (one rich live display at a time)
    seconds[name] = time.perf_counter() - start
    console.print(f"  {name:12} {seconds[name]:6.1f} s  {what}")
    return result


if __name__ == "__main__":
    sys.exit(main())
