"""Paired comparison of two groups of runs over the same eval items, with a bootstrap CI.

    python -m saelab.compare --a run_1/referee_items.json --b run_0/referee_items.json [...]
    compare([items_a1, ...], [items_b1, items_b2, items_b3]) -> {"metrics": {path: {...}}, ...}

Each run's referee writes `referee_items.json` beside referee.json (saelab.items): for every
key metric, the per-item values it averages. Every metric has one form,

    value = mean_k ( sum_i num[k][i] / sum_i den[k][i] )      (0 where the denominator is 0)
    value = 1 - that                                          (form "one_minus")

over K components (lags, probing tasks; K = 1 for most) and n items shared by the components
(sequences, questions, test examples); den is absent when every entry is 1 (a plain mean). So
the bootstrap recomputes each metric exactly as the referee did, on items resampled with
replacement, the same resample for every run in both groups (paired). A group's value is the
mean of its runs' values; the reported difference is mean(a) - mean(b) on all items and its 95%
CI is the 2.5/97.5 percentiles over resamples (seeded: the same files give the same CI).
The CI covers the eval's sampling noise only; the seed band (noise.json) covers training noise.

Only numpy and the standard library: the orchestrator calls it through the lab interpreter
without importing torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FORMAT = "saelab-items/1"
N_BOOT = 2000
SEED = 0
FORMS = ("ratio", "one_minus")


class ItemsError(ValueError):
    """Item files that cannot be compared; the message names the fix."""


def metric_value(entry: dict, weights: np.ndarray | None = None) -> np.ndarray | float:
    """An item-file metric's value; with weights [B, n] (resample counts), one value per row."""
    num = np.asarray(entry["num"], dtype=np.float64)  # [K, n]
    den = np.ones_like(num) if entry.get("den") is None else np.asarray(entry["den"], np.float64)
    if weights is None:
        num_sums, den_sums = num.sum(1), den.sum(1)  # [K]
    else:
        num_sums, den_sums = num @ weights.T, den @ weights.T  # [K, B]
    safe = np.where(den_sums == 0, 1.0, den_sums)
    ratio = np.where(den_sums == 0, 0.0, num_sums / safe).mean(0)
    value = 1.0 - ratio if entry["form"] == "one_minus" else ratio
    return float(value) if weights is None else value


def load_items(path: Path) -> dict:
    """One referee_items.json, checked: a wrong file is one line naming what to pass."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        message = f"{path}: not a readable items file ({error}); pass referee_items.json"
        raise ItemsError(message) from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ItemsError(f"{path}: not a {FORMAT} file; pass the referee's referee_items.json")
    return data


def compare(
    group_a: Sequence[dict],
    group_b: Sequence[dict],
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> dict:
    """Paired difference mean(a) - mean(b) of every metric all files share, with a bootstrap
    95% CI over items; see the module docstring. Groups hold 1..n loaded item files."""
    if not group_a or not group_b:
        raise ItemsError("each group needs at least one items file (--a ... --b ...)")
    runs = [*group_a, *group_b]
    shared = sorted(set.intersection(*(set(r["metrics"]) for r in runs)))
    rng = np.random.default_rng(seed)
    out = {}
    for path in shared:
        entries = [r["metrics"][path] for r in runs]
        _check_same_items(path, entries)
        n = len(entries[0]["num"][0])
        # resample counts: row b says how often each item was drawn in resample b
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
        values = np.array([metric_value(e) for e in entries])
        boots = np.stack([metric_value(e, weights) for e in entries])  # [runs, B]
        n_a = len(group_a)
        diff_boot = boots[:n_a].mean(0) - boots[n_a:].mean(0)
        low, high = np.percentile(diff_boot, [2.5, 97.5])
        out[path] = {
            "a": float(values[:n_a].mean()),
            "b": float(values[n_a:].mean()),
            "diff": float(values[:n_a].mean() - values[n_a:].mean()),
            "ci95": [float(low), float(high)],
            "excludes_zero": bool(low > 0 or high < 0),
            "a_runs": [float(v) for v in values[:n_a]],
            "b_runs": [float(v) for v in values[n_a:]],
            "n_items": n,
        }
    return {
        "metrics": out,
        "n_boot": n_boot,
        "seed": seed,
        "n_a": len(group_a),
        "n_b": len(group_b),
    }


def _check_same_items(path: str, entries: list[dict]) -> None:
    """Paired means the same items: the referee records which (a digest) per metric."""
    ids = {e["items"] for e in entries}
    if len(ids) != 1:
        raise ItemsError(
            f"{path}: the runs were measured on different items ({sorted(ids)}); compare runs "
            "the referee measured with the same profile and lab data"
        )
    forms = {e["form"] for e in entries}
    if len(forms) != 1 or not forms <= set(FORMS):
        raise ItemsError(f"{path}: forms {sorted(forms)} differ or are unknown; use {FORMS}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", nargs="+", type=Path, required=True, help="items files, group a")
    parser.add_argument("--b", nargs="+", type=Path, required=True, help="items files, group b")
    parser.add_argument("--n-boot", type=int, default=N_BOOT)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    try:
        result = compare(
            [load_items(p) for p in args.a], [load_items(p) for p in args.b], args.n_boot, args.seed
        )
    except ItemsError as error:
        print(f"compare: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
