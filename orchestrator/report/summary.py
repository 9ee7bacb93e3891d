"""One table over ideas: each idea's best VALID run against the baseline, read from journals.

An idea's numbers are the ones its loop journaled when it judged the run (the verdict: the
referee's measurements merged by validate.py, each tagged measured or reported), the baseline's
are its committed run directory's, validated the same way; never the agent's prose. The table
is printed with rich and written as summary.md, with one bar chart per template beside it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from orchestrator.ideas import IdeaError, load_idea
from orchestrator.journal import Journal, stamp
from orchestrator.report import findings, noise
from orchestrator.report.plots import save_figure
from orchestrator.templates import TemplateSpec, load_template
from orchestrator.trust import safefs
from orchestrator.trust.validate import REPORTED, validate_run
from orchestrator.trust.workspace import JOURNAL

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.md"


@dataclass
class IdeaSummary:
    idea: str
    template: str
    workspace: Path | None
    state: str  # "ended: <reason>", "unfinished", "not started", or the error that stopped it
    best: str | None = None  # the best VALID run (template objective, else the latest)
    metrics: dict[str, Any] = field(default_factory=dict)  # its key metrics, from its verdict
    sources: dict[str, str] = field(default_factory=dict)  # key metric -> measured | reported
    baseline: dict[str, Any] = field(default_factory=dict)
    bands: dict[str, noise.Band] = field(default_factory=dict)  # the baseline's seed noise
    valid: int = 0
    failed: int = 0  # attempts that crashed, timed out or failed validation
    tokens: int = 0
    cost: float = 0.0
    wall_seconds: float = math.nan  # first to last journal entry
    findings: list[str] = field(default_factory=list)  # '<hypothesis>: <verdict>' per hypothesis


def ideas_in(results_dir: Path) -> list[str]:
    """The ideas that have a workspace in `results_dir`, sorted."""
    starts = (Journal(path).started for path in Path(results_dir).glob(f"*/{JOURNAL}"))
    return sorted({start["idea"] for start in starts if start and start.get("idea")})


def newest_workspace(results_dir: Path, idea: str, since: datetime | None = None) -> Path | None:
    """The newest workspace of `idea` in `results_dir` with a journal entry at or after `since`."""
    found = []
    for path in Path(results_dir).glob(f"*_{idea}*/{JOURNAL}"):
        journal = Journal(path)
        begun, span = journal.started, journal.span()
        if begun and begun.get("idea") == idea and (since is None or span[1] >= since):
            found.append((stamp(begun), path.parent))
    return max(found)[1] if found else None


def summarize(idea: str, template: str, workspace: Path | None, error: str = "") -> IdeaSummary:
    """One idea's row from its workspace's journal; `error` is what stopped its loop, if any."""
    if workspace is None:
        return IdeaSummary(idea, template, None, error or "not started")
    journal = Journal(Path(workspace) / JOURNAL)
    spec = load_template(workspace)
    end = journal.ended
    state = f"ended: {end['reason']}" if end else error or "unfinished"
    verdict = best_valid(journal.valid_verdicts(), spec)
    baseline = validate_run(Path(workspace) / spec.baseline_run, spec)
    usage = journal.usage()
    return IdeaSummary(
        idea=idea,
        template=spec.name,
        workspace=Path(workspace),
        state=state,
        best=verdict["run_name"] if verdict else None,
        metrics=dict(verdict["metrics"]) if verdict else {},
        sources=dict(verdict.get("sources") or {}) if verdict else {},
        baseline=baseline.metrics,
        bands=noise.load_bands(workspace, spec),
        valid=len(journal.passed_runs()),
        failed=journal.failed_attempts(),
        tokens=usage.tokens,
        cost=usage.cost,
        wall_seconds=journal.wall_seconds(),
        findings=_findings(workspace, spec, journal),
    )


def _findings(workspace: Path, spec: TemplateSpec, journal: Journal) -> list[str]:
    """Each hypothesis of the idea the workspace began with, and its verdict."""
    begun = journal.started or {}
    try:
        idea = load_idea(begun["idea"], Path(begun["ideas_dir"]))
    except (KeyError, TypeError, IdeaError) as error:
        log.warning("%s: no hypotheses read (%s)", workspace, error)
        return []
    found = findings.compute(Path(workspace), spec, journal, idea.hypotheses)
    return [f"{row.hypothesis.describe()}: {row.verdict}" for row in found.rows]


def best_valid(valid: list[dict], spec: TemplateSpec) -> dict | None:
    """The VALID verdict that is best by the template's objective, else the latest one."""
    if spec.objective is None:
        return valid[-1] if valid else None
    name, goal = spec.objective
    scored = [v for v in valid if noise.is_number(v["metrics"].get(name))]
    if not scored:
        return valid[-1] if valid else None
    return (max if goal == "max" else min)(scored, key=lambda v: v["metrics"][name])


# ---- the table --------------------------------------------------------------------------------


def rows(group: list[IdeaSummary]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of one template's table: ideas as columns, the baseline first."""
    first = _reference(group)
    names = list(dict.fromkeys([*first.baseline, *(m for s in group for m in s.metrics)]))
    header = ["", "baseline", *(s.idea for s in group)]
    table = [
        ["state", "", *(s.state for s in group)],
        ["best VALID run", "run_0", *(s.best or "none" for s in group)],
        ["hypotheses", "", *("; ".join(s.findings) or "none" for s in group)],
    ]
    for name in names:
        base = noise.baseline_cell(first.baseline.get(name), first.bands.get(name))
        table.append([name, base, *(_cell(s, name) for s in group)])
    table += [
        ["runs valid / failed", "", *(f"{s.valid} / {s.failed}" for s in group)],
        ["LLM tokens", "", *(f"{s.tokens:,}" for s in group)],
        ["LLM cost (USD)", "", *(f"{s.cost:.4f}" for s in group)],
        ["wall time (min)", "", *(_minutes(s.wall_seconds) for s in group)],
    ]
    return header, table


def _cell(summary: IdeaSummary, name: str) -> str:
    """The best run's value, its difference from the baseline with the noise mark, and
    '(reported)' where the referee did not measure it."""
    if summary.best is None:
        return ""
    band = summary.bands.get(name)
    text = noise.cell(summary.metrics.get(name), summary.baseline.get(name), band)
    return text + (" (reported)" if summary.sources.get(name) == REPORTED else "")


def groups(summaries: list[IdeaSummary]) -> dict[str, list[IdeaSummary]]:
    """Ideas by template: each template has its own metrics and baseline."""
    found: dict[str, list[IdeaSummary]] = {}
    for summary in summaries:
        found.setdefault(summary.template, []).append(summary)
    return found


def rich_table(template: str, group: list[IdeaSummary]) -> Table:
    header, body = rows(group)
    table = Table(title=f"Ideas on template {template}", caption=LEGEND)
    table.add_column(header[0])
    for name in header[1:]:
        table.add_column(name, justify="right")
    for row in body:
        table.add_row(*row)
    return table


def markdown(summaries: list[IdeaSummary]) -> str:
    parts = ["# Batch summary", "", LEGEND, ""]
    for template, group in groups(summaries).items():
        header, body = rows(group)
        parts += [f"## Template {template}", ""]
        parts += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        parts += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in body]
        parts += [""]
        parts += [f"- {s.idea}: {s.workspace or 'no workspace'}" for s in group] + [""]
    return "\n".join(parts)


LEGEND = (
    "Each idea's best VALID run (by the template's objective, else its latest), as its verdict "
    "recorded it; (+x) its difference from the baseline, ~ within twice the baseline's seed "
    "spread, ! beyond it, (reported) a number the referee did not measure."
)


def write(results_dir: Path, summaries: list[IdeaSummary], console: Console) -> list[Path]:
    """Print one table per template, write summary.md and the plots; returns the files."""
    for template, group in groups(summaries).items():
        console.print(rich_table(template, group))
    results_dir = Path(results_dir).resolve()  # safefs trusts the path up to its last part
    path = safefs.write_text(results_dir, SUMMARY_FILE, markdown(summaries))
    plots = [plot(results_dir, t, g) for t, g in groups(summaries).items()]
    from orchestrator.report.html import write_batch_report  # html imports this module

    return [path, write_batch_report(results_dir, summaries), *(p for p in plots if p)]


# ---- the plot ---------------------------------------------------------------------------------


def plot(results_dir: Path, template: str, group: list[IdeaSummary]) -> Path | None:
    """One bar per idea's best run for each numeric key metric, the baseline as a line and its
    noise band shaded; ideas without a VALID run are left empty."""
    first = _reference(group)
    names = [name for name in first.baseline if noise.is_number(first.baseline[name])]
    if not names:
        return None
    cols = min(3, len(names))
    nrows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * nrows), layout="constrained")
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, cols, i + 1)
        values = [s.metrics.get(name) for s in group]
        ax.bar(
            [s.idea for s in group],
            [v if noise.is_number(v) else 0.0 for v in values],
            color=["tab:blue" if noise.is_number(v) else "none" for v in values],
        )
        for x, value in enumerate(values):
            if not noise.is_number(value):
                ax.text(x, 0, "no VALID run", ha="center", va="bottom", rotation=90)
        base, band = first.baseline[name], first.bands.get(name)
        ax.axhline(base, color="black", linewidth=1, label="baseline")
        if band is not None:
            low, high = base - band.half_width, base + band.half_width
            ax.axhspan(low, high, color="grey", alpha=0.25, label="seed noise")
        ax.set_title(name)
        ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle(f"Best VALID run per idea (template {template}); line: baseline")
    return save_figure(fig, Path(results_dir) / f"summary_{template}.png")


# ---- helpers ----------------------------------------------------------------------------------


def _reference(group: list[IdeaSummary]) -> IdeaSummary:
    """The idea whose workspace's baseline the table shows (every copy of a template's
    baseline is the same run)."""
    return next((s for s in group if s.workspace is not None), group[0])


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}" if math.isfinite(seconds) else ""
