"""The plots of a workspace: the template's own plot command (agent code, sandboxed), or the
built-in ones from the journal's verdicts when it fails or draws nothing. plots/ is the plot
command's to write, so the orchestrator's own PNGs go there through trust/safefs: a link it
planted at one of their names is refused (logged, that plot not drawn), never followed."""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from orchestrator.journal import Journal
from orchestrator.report import noise
from orchestrator.report.records import RunRecord, collect_runs, latest_per_name
from orchestrator.templates import TemplateSpec, expand_command
from orchestrator.trust import safefs
from orchestrator.trust.runner import run_sandboxed

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"  # where the built-in fallback plots go
PLOT_TIMEOUT = 600.0  # seconds for the template's plot command
EFFECTS_PNG = "effects.png"  # drawn by the orchestrator from the journal, after the plot command
CLIP = 10.0  # seed spreads: a larger effect is drawn at the edge with its value


def make_plots(
    workspace: Path,
    spec: TemplateSpec,
    journal: Journal,
    live: bool = True,
    confirmed: Mapping[str, Sequence[float]] | None = None,
) -> list[Path]:
    """The template's plot command under the runner (built-in plots when it fails or makes no
    PNG), and, where the template has a seed band, the effect plot drawn here from the
    journal's verdicts. `confirmed`: key metric -> the confirmed run's values at its seeds,
    drawn as a range. Returns the PNGs written."""
    workspace = Path(workspace)
    produced = []
    if spec.plot_command:  # first: agent code must not overwrite the effect plot
        produced = _template_plots(workspace, spec, spec.plot_command, live)
    runs = latest_per_name(collect_runs(workspace, spec, journal))
    bands = noise.load_bands(workspace, spec)
    effects = []
    if bands and len(runs) > 1:
        (workspace / PLOTS_DIR).mkdir(exist_ok=True)
        path = workspace / PLOTS_DIR / EFFECTS_PNG
        effects = [effect_plot(runs, list(spec.key_metrics), bands, path, confirmed)]
    if produced:
        return [p for p in produced if p not in effects] + [p for p in effects if p]
    drawn = effects + _fallback_plots(workspace, spec, runs, bars=not any(effects))
    return [p for p in drawn if p]


def _png_stamps(workspace: Path) -> dict[Path, int]:
    pngs = (p for p in workspace.rglob("*.png") if ".git" not in p.parts)
    return {p: p.lstat().st_mtime_ns for p in pngs if safefs.is_regular(p)}  # no link or FIFO


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


def _fallback_plots(
    workspace: Path, spec: TemplateSpec, runs: list[RunRecord], bars: bool
) -> list[Path | None]:
    """Built-in plots: the key metrics as bars (`bars`: when there is no effect plot, i.e. no
    seed band to measure differences in), and the loss curves."""
    out = workspace / PLOTS_DIR
    out.mkdir(exist_ok=True)
    paths = []
    if spec.key_metrics and bars:
        paths.append(_metric_bars(runs, list(spec.key_metrics), out / "key_metrics.png"))
    curves = _curves(workspace, spec, runs)
    if curves:
        paths.append(_loss_curves(curves, out / "loss_curves.png"))
    return paths


def _metric_bars(runs: list[RunRecord], names: list[str], path: Path) -> Path | None:
    """One bar chart per key metric across runs; invalid runs grey and hatched."""
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
        ax.set_title(name)
        ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle("Key metrics per run (grey, hatched: failed validation; no seed band)")
    return save_figure(fig, path)


def effect_plot(
    runs: list[RunRecord],
    names: list[str],
    bands: Mapping[str, noise.Band],
    path: Path,
    confirmed: Mapping[str, Sequence[float]] | None = None,
) -> Path | None:
    """Per key metric (a row), each run's difference from the baseline's seed mean in units
    of its seed spread, the ±NOISE_FACTOR band shaded and, from `confirmed`, the confirmed
    run's seed range. Bars from 0 hide a 0.003 change of a 0.96 EV; spreads show it. The
    first run is the baseline; a value past ±CLIP spreads is drawn at the edge, labelled."""
    rows = [name for name in names if name in bands]
    fig = Figure(figsize=(8, 1.0 + 0.45 * max(len(rows), 1)), layout="constrained")
    ax = fig.add_subplot()
    ax.axvspan(-noise.NOISE_FACTOR, noise.NOISE_FACTOR, color="tab:orange", alpha=0.25)
    ax.axvline(0, color="black", linewidth=0.8)
    others = runs[1:]
    for i, run in enumerate(others):
        offset = 0.3 * (i - (len(others) - 1) / 2) / max(len(others), 1)
        _effect_points(ax, run, rows, bands, offset, f"C{i % 10}")
    for y, name in enumerate(rows):
        seeds = [v for v in (confirmed or {}).get(name, []) if noise.is_number(v)]
        if seeds:
            low, high = (_units(v, bands[name]) for v in (min(seeds), max(seeds)))
            ax.plot([low, high], [y, y], color="black", linewidth=4, alpha=0.6, zorder=2)
    ax.set_yticks(range(len(rows)), [_row_label(name, bands[name]) for name in rows])
    ax.invert_yaxis()
    ax.set_xlim(-CLIP - 1, CLIP + 1)
    base = runs[0].name if runs else "the baseline"
    n_seeds = max((band.n_seeds for band in bands.values()), default=0)
    ax.set_xlabel(f"(run - {base} mean) / {base} seed spread, over {n_seeds} seeds")
    ax.set_title(
        f"Effect per key metric, measured (orange: within ±{noise.NOISE_FACTOR:g} seed spreads, "
        "seed noise)\nhollow: failed validation"
        + ("; black bar: the confirmed run's seed range" if confirmed else ""),
        fontsize=9,
    )
    if others:  # outside the axes: inside, it hid the values clipped to the right edge
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def _effect_points(
    ax: Axes, run: RunRecord, rows: list[str], bands: Mapping[str, noise.Band], dy: float, color
) -> None:
    """One run's markers, one per metric row it has a number for."""
    xs, ys = [], []
    sizes = effect_sizes(run, rows, bands)
    for y, name in enumerate(rows):
        if name not in sizes:
            continue
        units = sizes[name]
        xs.append(max(-CLIP, min(CLIP, units)))
        ys.append(y + dy)
        if abs(units) > CLIP:
            ax.annotate(
                f"{units:+.3g}", (xs[-1], ys[-1]), (0, 5), textcoords="offset points", fontsize=7
            )
    ok = run.status == "ok"
    ax.scatter(
        xs,
        ys,
        label=run.name + ("" if ok else f" ({run.label})"),
        facecolors=color if ok else "none",
        edgecolors=color,
        zorder=3,
    )


def effect_sizes(
    run: RunRecord, names: list[str], bands: Mapping[str, noise.Band]
) -> dict[str, float]:
    """Key metric -> the run's difference from the baseline's seed mean in seed spreads, for
    each metric with a band and a number."""
    return {
        name: _units(run.metrics[name], bands[name])
        for name in names
        if name in bands and noise.is_number(run.metrics.get(name))
    }


def _units(value: float, band: noise.Band) -> float:
    """The difference from the band's mean in seed spreads (±inf when the spread is 0 and the
    value differs: every seed agreed, so any change is beyond noise)."""
    delta = float(value) - band.mean
    if band.spread > 0:
        return delta / band.spread
    return 0.0 if delta == 0 else math.copysign(math.inf, delta)


def _row_label(name: str, band: noise.Band) -> str:
    return f"{name}\n{noise.short(band.mean)} ±{band.spread:.2g}"


def _curves(workspace: Path, spec: TemplateSpec, runs: list[RunRecord]) -> dict[str, dict]:
    if not spec.curves_file:
        return {}
    curves = {}
    for run in runs:
        path = workspace / run.name / spec.curves_file
        try:
            data = safefs.read_json(path)  # a run dir's: never through a link
            curves[run.name] = {"step": list(data["step"]), "loss": list(data["loss"])}
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("%s is not {'step': [...], 'loss': [...]} (%s); skipped", path, err)
    return curves


def _loss_curves(curves: dict[str, dict], path: Path) -> Path | None:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ax.plot(curve["step"], curve["loss"], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss per run")
    ax.legend()
    return save_figure(fig, path)


def save_figure(fig: Figure, path: Path) -> Path | None:
    """`fig` as a PNG at `path`; None (logged) when agent code planted a link or FIFO there."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    try:
        return safefs.write_bytes(path.parent, path.name, png.getvalue())
    except safefs.Planted as err:
        log.warning("plot not drawn: %s", err)
        return None
