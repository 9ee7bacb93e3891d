"""How close harvesting to the cache comes to the truncated forward pass, and what a hit costs.

    .venvs/lab/bin/python benchmarks/harvest.py            # layer 6, 64k tokens, 1 thread
    .venvs/lab/bin/python benchmarks/harvest.py --n-tokens 262144 --threads 2

On the same packed batches it times (1) the forward pass stopped after `--layer` alone, the
limit any harvester can reach; (2) harvest(rebuild=True), end to end (corpus packing,
forward, bf16 copy, sha256, disk); (3) the same harvest() again, which must hit the cache.
Both use the real $SAELAB_CACHE, where the corpus is already built. Targets: (2)/(1)
throughput >= 0.9; (3) < 5% of (2)'s time. Not a test: run it on a quiet machine and copy
the table into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from saelab import data
from saelab.activations import harvest, pack_sequences
from saelab.models import OFFLINE_MODEL, LanguageModel, load_model

console = Console()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=OFFLINE_MODEL, help="model name (see load_model)")
    parser.add_argument("--layer", type=int, default=6, help="block whose output is harvested")
    parser.add_argument("--corpus", default="offline-mix", help="saelab.data corpus name")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence, no BOS")
    parser.add_argument("--n-tokens", type=int, default=65_536, help="tokens to harvest")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args()


def time_forward_only(
    lm: LanguageModel, tokens: torch.Tensor, layer: int, batch_size: int
) -> float:
    """Seconds for the stopped forward pass over `tokens`, nothing kept."""
    bos = torch.full((1, 1), lm.bos_token_id, dtype=torch.long)
    start = time.perf_counter()
    for rows in tokens.split(batch_size):
        ids = torch.cat([bos.expand(len(rows), 1), rows.long()], dim=1)
        lm.residuals(ids, torch.ones_like(ids), layer)
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    n_seq = -(-args.n_tokens // args.seq_len)
    tokens = pack_sequences(lm.tokenizer, data.load_corpus(args.corpus), args.seq_len, n_seq)
    n_tok = tokens.numel()
    time_forward_only(lm, tokens[: args.batch_size], args.layer, args.batch_size)  # warm-up

    forward_s = time_forward_only(lm, tokens, args.layer, args.batch_size)
    kwargs = dict(seq_len=args.seq_len, n_tokens=n_tok, batch_size=args.batch_size)
    start = time.perf_counter()
    harvest(lm, args.layer, args.corpus, rebuild=True, **kwargs)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    harvest(lm, args.layer, args.corpus, progress=False, **kwargs)
    hit_s = time.perf_counter() - start

    table = Table(title=f"{args.model} layer {args.layer}, {n_tok:,} tokens, {args.threads} thr")
    for col in ("step", "seconds", "tokens/s", "ratio", "target"):
        table.add_column(col, justify="right")
    table.add_row(
        "forward stopped at layer", f"{forward_s:.1f}", f"{n_tok / forward_s:,.0f}", "", ""
    )
    ratio = forward_s / build_s
    table.add_row(
        "harvest to cache", f"{build_s:.1f}", f"{n_tok / build_s:,.0f}", f"{ratio:.2f}", ">= 0.9"
    )
    table.add_row("harvest, cache hit", f"{hit_s:.2f}", "", f"{hit_s / build_s:.1%}", "< 5%")
    console.print(table)


if __name__ == "__main__":
    main()
