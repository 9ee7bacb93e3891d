"""How close the template's training step comes to its dense encoder matmuls, on real data.

    .venvs/lab/bin/python benchmarks/train.py                     # d 640, F 2560, k 48
    .venvs/lab/bin/python benchmarks/train.py --architecture=topk --batch_size=8

Times, alternately in one process on the same batches of the cpu profile's activation cache:
(1) the roofline: the two dense encoder matmuls a TopK step cannot avoid (x @ W_enc and the
W_enc gradient x^T @ g), in bf16 at the step's shapes; (2) experiment.train() itself, the real
loop (autocast, AuxK, decoder constraint, fused Adam, dead-latent tracking, lr schedule). The
ratio (2)/(1) is what the machine's load cannot change much. Extra flags go to Config.
Targets (issue 11): >= 20,000 tok/s and >= 0.6 of the roofline on 2 cores. Not a test.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "templates" / "temporal_sae"))
import experiment  # noqa: E402  (the template is a script, not a package)

console = Console()
ROUNDS = 3


def roofline_seconds(x_BLD: torch.Tensor, d_sae: int, steps: int) -> float:
    """Seconds for `steps` x (forward encoder matmul + its weight-gradient matmul), bf16."""
    x_ND = x_BLD.flatten(0, 1).bfloat16()
    W_DF = torch.randn(x_ND.shape[1], d_sae).bfloat16()
    start = time.perf_counter()
    for _ in range(steps):
        pre_NF = x_ND @ W_DF
        x_ND.T @ pre_NF  # the gradient of W_enc has this shape and cost
    return time.perf_counter() - start


def step_seconds(cfg: experiment.Config, cache, x_BLD: torch.Tensor, steps: int) -> float:
    """Seconds for `steps` real training steps (experiment.train), warm-up run excluded."""
    sae = experiment.init_sae(cfg, cache, x_BLD.float().flatten(0, 1).mean(0))
    facts = experiment.train(sae, experiment.train_batches(cache, cfg, steps, "cpu"), steps, cfg)
    return facts["train_seconds"]


def main(argv: list[str]) -> None:
    cfg = experiment.parse_args(["--out_dir=/tmp/bench_train", "--log_every=1000", *argv])
    steps = max(cfg.warmup_steps, 20)
    cfg = experiment.dataclasses.replace(cfg, train_tokens=steps * cfg.batch_size * cfg.seq_len)
    _, cache = experiment.load_data(cfg)
    x_BLD = next(experiment.train_batches(cache, cfg, 1, "cpu"))
    d_sae = cfg.expansion * x_BLD.shape[-1]
    tokens = steps * x_BLD.shape[0] * x_BLD.shape[1]
    load_before = os.getloadavg()[0]
    step_seconds(cfg, cache, x_BLD, steps)  # warm-up: allocator, page cache, threshold EMA
    roof, real = [], []
    for _ in range(ROUNDS):  # interleaved, so a change in load hits both alike
        roof.append(tokens / roofline_seconds(x_BLD, d_sae, steps))
        real.append(tokens / step_seconds(cfg, cache, x_BLD, steps))
    roof_tps, real_tps = statistics.median(roof), statistics.median(real)
    table = Table(
        title=f"{cfg.architecture}: d {x_BLD.shape[-1]}, F {d_sae}, k {cfg.k}, "
        f"{x_BLD.shape[0]}x{x_BLD.shape[1]} tokens/step, bf16={cfg.bf16}"
    )
    for column in ("", "tokens/s (median of 3)", "ratio"):
        table.add_column(column, justify="right")
    table.add_row("dense encoder matmuls (roofline)", f"{roof_tps:,.0f}", "")
    table.add_row(
        "training step (experiment.train)", f"{real_tps:,.0f}", f"{real_tps / roof_tps:.2f}"
    )
    console.print(table)
    console.print(
        f"torch threads {torch.get_num_threads()}, load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
