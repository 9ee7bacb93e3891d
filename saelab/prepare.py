"""Build the lab's shared caches once, before any experiment runs: model, data, activations.

    python -m saelab.prepare --layer 6 --seq_len 128 --cache_tokens 300000

Each step is skipped when its cache entry exists and is whole (the entries are written
atomically, so an interrupted build is redone, never trusted). Prints one line per step with
its seconds; a problem the user can fix is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from saelab.activations import harvest
from saelab.cache import SaelabError, cache_root
from saelab.data import load_corpus, probing_tasks, unlearning_questions
from saelab.models import OFFLINE_MODEL, load_model

console = Console(stderr=True)
MIN_FREE_GB = 3.0  # converted weights ~1 GB, BIG-bench ~0.4 GB, activations ~0.5 GB, eval cache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", default=OFFLINE_MODEL)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--corpus", default="offline-mix")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--cache_tokens", type=int, default=300_000)
    args = parser.parse_args(argv)
    try:
        prepare(args.model_name, args.layer, args.corpus, args.seq_len, args.cache_tokens)
    except (SaelabError, ValueError) as err:
        console.print(f"[red]error:[/] {err}", highlight=False)
        return 2
    return 0


def prepare(model_name: str, layer: int, corpus: str, seq_len: int, cache_tokens: int) -> dict:
    """Build (or find) every shared cache an experiment needs; returns seconds per step."""
    check_disk_space()
    seconds: dict[str, float] = {}
    model = _step(seconds, "model", f"{model_name} weights", lambda: _model(model_name))
    _step(seconds, "data", "offline corpora and eval sets", lambda: _data(corpus))
    _step(
        seconds,
        "activations",
        f"activation cache: layer {layer}, {cache_tokens:,} tokens",
        lambda: harvest(model, layer, corpus, seq_len, cache_tokens),
    )
    total = sum(seconds.values())
    console.print(f"[bold]lab caches ready[/] in {total:.0f} s under {cache_root()}")
    return seconds


def check_disk_space(min_free_gb: float = MIN_FREE_GB) -> None:
    """Refuse to start a build that would fill the disk half-way through."""
    root = cache_root()
    free_gb = shutil.disk_usage(root).free / 1e9
    if free_gb < min_free_gb:
        raise SaelabError(
            f"only {free_gb:.1f} GB free under {root}; the lab caches need about "
            f"{min_free_gb:.0f} GB: free space there or set SAELAB_CACHE to a bigger disk"
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
