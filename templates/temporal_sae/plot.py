"""Plot every run_*/ in the current directory: loss curves, key metrics, the L0-EV frontier.

    python plot.py          # writes plots/loss_curves.png, key_metrics.png, frontier.png

Metric paths come from template.json (key_metrics); runs without a value are left out. Each
run's numbers are its final_info.json and the referee's referee.json. The baseline's seed-noise
band (template.json "noise", written by make_baseline.py) is shaded around run_0: a run inside
it differs from the baseline by less than 2 seed spreads, which a different seed alone gives.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

LABELS: dict[str, str] = {}  # run dir -> legend label, e.g. {"run_0": "baseline"}
OUT = Path("plots")  # the only place the plot command may write (it runs sandboxed)
NOISE_FACTOR = 2  # as orchestrator/report/noise.py: within 2 spreads = within seed noise
EV_PATH = "core.eval_result_metrics.reconstruction_quality.explained_variance"
L0_PATH = "core.eval_result_metrics.sparsity.l0"


def template() -> dict:
    """template.json beside the runs, or beside this script."""
    for folder in (Path.cwd(), Path(__file__).resolve().parent):
        if (folder / "template.json").exists():
            return json.loads((folder / "template.json").read_text())
    raise SystemExit("template.json not found in the current directory or beside plot.py")


def lookup(info: dict, dotted: str) -> float | None:
    """The number at a dotted path, or None when missing or not finite."""
    value = info
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def load_runs() -> dict[str, dict]:
    """run dir name -> its numbers, in run order: the training facts the run reported
    (final_info.json) under the blocks the lab's referee measured (referee.json)."""
    runs = {}
    paths = sorted(Path.cwd().glob("run_*/final_info.json"), key=lambda p: run_number(p.parent))
    for path in paths:
        measured = path.parent / "referee.json"
        runs[path.parent.name] = json.loads(path.read_text())
        if measured.exists():
            runs[path.parent.name] |= json.loads(measured.read_text())
    return runs


def load_spreads(noise_file: str | None) -> dict[str, float]:
    """Dotted metric path -> the baseline's spread over its seeds; empty without a band."""
    path = Path(noise_file) if noise_file else None
    if path is None or not path.exists():
        return {}
    return {p: band["spread"] for p, band in json.loads(path.read_text())["metrics"].items()}


def shade_band(ax, base: float | None, spread: float | None) -> None:
    """The baseline +- 2 seed spreads across a bar chart."""
    if base is not None and spread:
        half = NOISE_FACTOR * spread
        ax.axhspan(base - half, base + half, color="tab:orange", alpha=0.25, zorder=3)


def run_number(run_dir: Path) -> int:
    suffix = run_dir.name.removeprefix("run_")
    return int(suffix) if suffix.isdigit() else 10**6


def label(run: str) -> str:
    return LABELS.get(run, run)


def plot_loss_curves(runs: dict[str, dict], curves_file: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in runs:
        path = Path(run) / curves_file
        if path.exists():
            curve = json.loads(path.read_text())
            ax.plot(curve["step"], curve["loss"], label=label(run))
    ax.set(xlabel="optimizer step", ylabel="training loss", yscale="log", title="Loss curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "loss_curves.png", dpi=150)
    plt.close(fig)


def plot_key_metrics(
    runs: dict[str, dict], key_metrics: dict[str, str], spreads: dict[str, float]
) -> None:
    n_cols = min(3, len(key_metrics))
    n_rows = math.ceil(len(key_metrics) / n_cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(4.5 * n_cols, 3.5 * n_rows), squeeze=False, layout="constrained"
    )
    for ax, (name, dotted) in zip(axes.flat, key_metrics.items(), strict=False):
        values = {label(run): lookup(info, dotted) for run, info in runs.items()}
        present = {run: value for run, value in values.items() if value is not None}
        bars = ax.bar(list(present), list(present.values()), color="tab:blue")
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        shade_band(ax, lookup(runs.get("run_0", {}), dotted), spreads.get(dotted))
        ax.set_title(name)
        ax.tick_params(axis="x", rotation=30)
    for ax in list(axes.flat)[len(key_metrics) :]:
        ax.axis("off")
    # constrained layout leaves room for the title
    fig.suptitle("Key metrics per run (orange: run_0 +- 2 seed spreads, within seed noise)")
    fig.savefig(OUT / "key_metrics.png", dpi=150)
    plt.close(fig)


def plot_frontier(runs: dict[str, dict], spreads: dict[str, float]) -> None:
    """Sparsity vs reconstruction: better SAEs sit up and to the left."""
    fig, ax = plt.subplots(figsize=(6, 5))
    base = runs.get("run_0", {})
    l0, ev = lookup(base, L0_PATH), lookup(base, EV_PATH)
    if l0 is not None and ev is not None and (L0_PATH in spreads or EV_PATH in spreads):
        dx, dy = (NOISE_FACTOR * spreads.get(p, 0.0) for p in (L0_PATH, EV_PATH))
        band = plt.Rectangle((l0 - dx, ev - dy), 2 * dx, 2 * dy, color="tab:orange", alpha=0.25)
        ax.add_patch(band)
        band.set_label("run_0 +- 2 seed spreads")
    for run, info in runs.items():
        l0, ev = lookup(info, L0_PATH), lookup(info, EV_PATH)
        if l0 is not None and ev is not None:
            ax.scatter(l0, ev, s=50, label=label(run))  # a legend: close runs overlap as text
    ax.set(xlabel="L0 (active latents per token)", ylabel="explained variance")
    ax.legend(loc="best", fontsize="small")
    ax.set_title("Sparsity-reconstruction frontier")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT / "frontier.png", dpi=150)
    plt.close(fig)


def main() -> None:
    meta = template()
    runs = load_runs()
    if not runs:
        raise SystemExit(f"no run_*/final_info.json under {Path.cwd()}")
    OUT.mkdir(exist_ok=True)
    plot_loss_curves(runs, meta.get("curves_file", "loss_curve.json"))
    spreads = load_spreads(meta.get("noise"))
    plot_key_metrics(runs, meta["key_metrics"], spreads)
    plot_frontier(runs, spreads)
    print(f"plotted {len(runs)} runs into {OUT}/: loss_curves.png, key_metrics.png, frontier.png")


if __name__ == "__main__":
    main()
