"""The plots of a workspace: the template's own plot command (agent code, sandboxed), or the
built-in ones from the journal's verdicts when it fails or draws nothing."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from matplotlib.figure import Figure

from orchestrator.journal import Journal
from orchestrator.report import noise
from orchestrator.report.records import RunRecord, collect_runs, latest_per_name
from orchestrator.templates import TemplateSpec, expand_command
from orchestrator.trust.runner import run_sandboxed

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"  # where the built-in fallback plots go
PLOT_TIMEOUT = 600.0  # seconds for the template's plot command


def make_plots(
    workspace: Path, spec: TemplateSpec, journal: Journal, live: bool = True
) -> list[Path]:
    """The template's plot command under the runner; built-in plots when it fails or makes
    no PNG. Returns the PNGs written."""
    workspace = Path(workspace)
    if spec.plot_command:
        produced = _template_plots(workspace, spec, spec.plot_command, live)
        if produced:
            return produced
    runs = latest_per_name(collect_runs(workspace, spec, journal))
    return _fallback_plots(workspace, spec, runs)


# an aider SEARCH/REPLACE block, with the file name on the line before its fence


def _png_stamps(workspace: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in workspace.rglob("*.png") if ".git" not in p.parts}


def _template_plots(
    workspace: Path, spec: TemplateSpec, command: list[str], live: bool
) -> list[Path]:
    """The template's plot command (agent code: sandboxed, it may write plots/ only)."""
    out = workspace / PLOTS_DIR
    out.mkdir(exist_ok=True)
    before = _png_stamps(out)
    result = run_sandboxed(
        expand_command(command, spec),
        spec,
        cwd=workspace,
        writable=out,
        log_path=workspace / "plot_log.txt",
        timeout=PLOT_TIMEOUT,
        live=live,
        title="plot",
    )
    produced = sorted(p for p, stamp in _png_stamps(out).items() if before.get(p) != stamp)
    if not result.ok:
        log.warning("plot command failed (see %s); using built-in plots", result.log_path)
        return []
    if not produced:
        log.warning("plot command wrote no PNG in %s; using built-in plots", out)
    return produced


def _fallback_plots(workspace: Path, spec: TemplateSpec, runs: list[RunRecord]) -> list[Path]:
    out = workspace / PLOTS_DIR
    out.mkdir(exist_ok=True)
    paths = []
    if spec.key_metrics:
        bands = noise.load_bands(workspace, spec)
        paths.append(_metric_bars(runs, list(spec.key_metrics), out / "key_metrics.png", bands))
    curves = _curves(workspace, spec, runs)
    if curves:
        paths.append(_loss_curves(curves, out / "loss_curves.png"))
    return paths


def _metric_bars(
    runs: list[RunRecord], names: list[str], path: Path, bands: dict[str, noise.Band]
) -> Path:
    """One bar chart per key metric across runs; invalid runs grey and hatched; the band of
    seed noise around the baseline (first run) shaded."""
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows), layout="constrained")
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        shown = [r for r in runs if noise.is_number(r.metrics.get(name))]
        bars = ax.bar(
            [r.name for r in shown],
            [r.metrics[name] for r in shown],
            color=["tab:blue" if r.status == "ok" else "lightgrey" for r in shown],
        )
        for bar, run in zip(bars, shown, strict=True):
            bar.set_hatch("" if run.status == "ok" else "//")
        base, band = runs[0].metrics.get(name) if runs else None, bands.get(name)
        if band and noise.is_number(base):
            low, high = base - band.half_width, base + band.half_width
            ax.axhspan(low, high, color="tab:orange", alpha=0.25, zorder=3)
        ax.set_title(name)
        ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle(
        "Key metrics per run (grey, hatched: failed validation; orange: baseline "
        f"± {noise.NOISE_FACTOR:g} seed spreads, within seed noise)"
    )
    fig.savefig(path, dpi=110)
    return path


def _curves(workspace: Path, spec: TemplateSpec, runs: list[RunRecord]) -> dict[str, dict]:
    if not spec.curves_file:
        return {}
    curves = {}
    for run in runs:
        path = workspace / run.name / spec.curves_file
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
            curves[run.name] = {"step": list(data["step"]), "loss": list(data["loss"])}
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            log.warning("%s is not {'step': [...], 'loss': [...]} (%s); skipped", path, err)
    return curves


def _loss_curves(curves: dict[str, dict], path: Path) -> Path:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ax.plot(curve["step"], curve["loss"], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss per run")
    ax.legend()
    fig.savefig(path, dpi=110)
    return path
