"""Per-eval seconds on the real offline Gemma: cold eval cache vs warm, side by side.

    .venvs/lab/bin/python benchmarks/evals.py [--tiny] [--layer 6] [--seq_len 128]

Evaluates a PCA-based reference SAE (top principal directions split into +/- ReLU halves)
fitted on a harvested cache, three times: with the on-disk eval cache emptied (what the first
experiment on a machine pays), with the disk cache warm but nothing in memory (every later
run of experiment.py), and with the in-process memo warm too (a second SAE in one process).
"""

from __future__ import annotations

import argparse
import shutil

from rich.console import Console
from rich.table import Table

from saelab.activations import harvest
from saelab.cache import cache_dir
from saelab.evals import EVALS, EvalConfig, common, run_evals
from saelab.evals.reference import PCASAE
from saelab.models import load_model

console = Console(width=130)  # the table is wider than a log's default 80 columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="EvalConfig().tiny() sizes")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=64 * 128 * 4)
    args = parser.parse_args()
    model = load_model()
    cache = harvest(model, args.layer, "offline-mix", args.seq_len, args.tokens)
    train, test = cache.split(0.25)
    sae = PCASAE(train.acts.float().flatten(0, 1)[:20_000], k=64)
    config = EvalConfig().tiny() if args.tiny else EvalConfig()
    shutil.rmtree(cache_dir("evals"))
    passes = []
    for clear_memo in (True, True, False):
        if clear_memo:
            common._MEMO.clear()
        passes.append(run_evals(sae, model, args.layer, test_cache=test, config=config))
    table = Table(title=f"eval seconds ({'tiny' if args.tiny else 'default'} config)")
    for column in ("eval", "cold s", "disk-cached s", "memoised s", "cold / cached", "headline"):
        table.add_column(column)
    totals = [0.0, 0.0, 0.0]
    for name in EVALS:
        seconds = [p[name]["eval_result_unstructured"]["seconds"] for p in passes]
        totals = [t + s for t, s in zip(totals, seconds, strict=True)]
        cells = [f"{s:.1f}" for s in seconds]
        table.add_row(name, *cells, f"{seconds[0] / seconds[1]:.1f}x", headline(passes[1], name))
    table.add_row("all", *[f"{t:.1f}" for t in totals], f"{totals[0] / totals[1]:.1f}x", "")
    console.print(table)


def headline(blocks: dict, name: str) -> str:
    m = blocks[name]["eval_result_metrics"]
    if name == "core":
        return (
            f"EV {m['reconstruction_quality']['explained_variance']:.3f}  "
            f"CE score {m['model_performance_preservation']['ce_loss_score']:.3f}  "
            f"KL score {m['model_behavior_preservation']['kl_div_score']:.3f}"
        )
    if name == "sparse_probing":
        sae, llm = m["sae"]["sae_test_accuracy"], m["llm"]["llm_test_accuracy"]
        return f"sae acc {sae:.3f}  llm acc {llm:.3f}"
    if name == "unlearning":
        return f"score {m['unlearning']['unlearning_score']:.3f}"
    return f"consistency short {m['temporal']['consistency_short']:.3f}"


if __name__ == "__main__":
    main()
