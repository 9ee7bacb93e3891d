"""The baseline's seed-noise band: how far each key metric moves when only the seed changes.

The template names a noise file (template.json "noise", e.g. "run_0/noise.json"), written by
its baseline maker after training the baseline at several seeds:

    {"seeds": [0, 1, 2], "metrics": {"<dotted.path>": {"values": [...], "mean": m, "spread": s}}}

spread is the sample standard deviation over the seeds. A run's difference is taken from the
baseline's MEAN over its seeds (one seed's value is itself a draw), and is within seed noise when
|difference| < NOISE_FACTOR x spread: a different seed alone could have given it. Without a band
the difference is from the baseline run's one value. Nothing here knows what the metrics mean.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.templates import TemplateSpec
from orchestrator.trust import safefs
from orchestrator.trust.validate import validate_run

log = logging.getLogger(__name__)

NOISE_FACTOR = 2.0  # a difference under 2 x the seed spread is not a finding
WITHIN, BEYOND = "~", "!"  # the marks beside a difference in tables


@dataclass(frozen=True)
class Band:
    """One metric's spread over the baseline's seeds."""

    mean: float
    spread: float
    n_seeds: int

    @property
    def half_width(self) -> float:
        """How far from the baseline a difference is still seed noise."""
        return NOISE_FACTOR * self.spread

    def within(self, difference: float) -> bool:
        # no difference is within any band, a zero spread included (a metric every seed fixes)
        return difference == 0 or abs(difference) < self.half_width


def band_record(values: list[float]) -> dict[str, Any]:
    """The noise file's entry for one metric measured at several seeds (>= 2)."""
    return {"values": values, "mean": statistics.fmean(values), "spread": statistics.stdev(values)}


def write_noise(path: Path, seeds: list[int], per_seed: list[dict[str, Any]]) -> dict:
    """Write the noise file from each seed's {dotted path: value}; non-numbers are skipped."""
    paths = [p for p in per_seed[0] if all(is_number(run.get(p)) for run in per_seed)]
    data = {
        "seeds": seeds,
        "metrics": {p: band_record([float(run[p]) for run in per_seed]) for p in paths},
    }
    path.write_text(json.dumps(data, indent=2))
    return data


def load_bands(workspace: Path, spec: TemplateSpec) -> dict[str, Band]:
    """Key-metric display name -> Band, from the template's noise file in `workspace`; empty
    when the template names none or the file is missing or malformed (logged)."""
    if not spec.noise:
        return {}
    path = Path(workspace) / spec.noise
    try:
        data = safefs.read_json(path)  # run_0's: never through a link
        metrics, n_seeds = data["metrics"], len(data["seeds"])
        return {
            name: Band(float(metrics[p]["mean"]), float(metrics[p]["spread"]), n_seeds)
            for name, p in spec.key_metrics.items()
            if p in metrics
        }
    except FileNotFoundError:
        log.warning("no seed-noise band: %s is missing (make baseline writes it)", path)
    except (OSError, KeyError, TypeError, ValueError) as error:  # OSError: safefs.Planted
        log.warning("no seed-noise band: %s is malformed (%s); rerun make baseline", path, error)
    return {}


def reference(baseline: Any, band: Band | None) -> Any:
    """What a difference is taken from: the baseline's seed mean, else its one value."""
    return band.mean if band is not None else baseline


def difference(value: Any, baseline: Any, band: Band | None) -> str:
    """'+0.0012 ~' (within noise), '-0.031 !' (beyond it), '+0.0012' (no band), '' (no number):
    `value` minus the baseline's seed mean (its one value `baseline` without a band)."""
    base = reference(baseline, band)
    if not (is_number(value) and is_number(base)):
        return ""
    delta = float(value) - float(base)
    mark = "" if band is None else f" {WITHIN if band.within(delta) else BEYOND}"
    return f"{delta:+.4g}{mark}"


def cell(value: Any, baseline: Any, band: Band | None) -> str:
    """A run's table cell: '0.9312 (+0.0012 ~)', or the value alone when there is nothing to
    compare."""
    diff = difference(value, baseline, band)
    return short(value) + (f" ({diff})" if diff else "")


def baseline_cell(value: Any, band: Band | None) -> str:
    """The baseline's table cell: its seed mean ± spread ('0.93 ±0.0005'), or its one value."""
    if band is None:
        return short(value)
    return f"{short(band.mean)} ±{band.spread:.2g}"


def compared(value: Any, baseline: Any, band: Band | None, baseline_run: str) -> str:
    """One metric for a prompt: value, difference from the baseline's seed mean, and what the
    band says."""
    shown, base = short(value), reference(baseline, band)
    if not (is_number(value) and is_number(base)):
        return shown
    delta = float(value) - float(base)
    if band is None:
        return f"{shown} ({baseline_run} {short(base)}, difference {delta:+.4g})"
    verdict = "within seed noise" if band.within(delta) else "beyond seed noise"
    return (
        f"{shown} ({baseline_run} mean {short(band.mean)} ±{band.spread:.2g} over "
        f"{band.n_seeds} seeds, difference {delta:+.4g}: {verdict})"
    )


def against_baseline(workspace: Path, spec: TemplateSpec, metrics: dict[str, Any]) -> dict:
    """Each key metric of a run as `compared` shows it, against the workspace's baseline run."""
    baseline = validate_run(Path(workspace) / spec.baseline_run, spec).metrics
    bands = load_bands(workspace, spec)
    return {
        name: compared(value, baseline.get(name), bands.get(name), spec.baseline_run)
        for name, value in metrics.items()
    }


def short(value: Any) -> str:
    """4 significant digits for a float; other values as JSON."""
    if isinstance(value, float):
        return f"{value:.4g}"  # nan and inf as Python writes them
    return "missing" if value is None else json.dumps(value, default=str)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
