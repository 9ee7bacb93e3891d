"""The loop's last word: notes.txt, the plots, the runs on their commits (git notes and tags),
the runs table and the time by phase."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator.ideas import parse_hypotheses
from orchestrator.journal import Journal, Usage
from orchestrator.report import findings, noise
from orchestrator.report.html import write_report
from orchestrator.report.notes import write_notes
from orchestrator.report.plots import make_plots
from orchestrator.report.records import RunRecord, collect_runs
from orchestrator.report.story import annotate_commits
from orchestrator.report.timing import Phases, phase_table
from orchestrator.templates import TemplateSpec


def close(
    workspace: Path,
    spec: TemplateSpec,
    journal: Journal,
    idea: Mapping,
    banner: str | None,
    phases: Phases,
    console: Console,
    live: bool,
) -> None:
    """Write notes.txt, the plots and report.html; print the runs table, the time by phase
    and report.html's path last."""
    began = time.perf_counter()
    notes = write_notes(workspace, spec, journal, idea, replay_banner=banner)
    runs = collect_runs(workspace, spec, journal)
    declared = parse_hypotheses(idea.get("Hypotheses", []), notes)
    found = findings.compute(workspace, spec, journal, declared)
    plots = make_plots(workspace, spec, journal, live, findings.confirmed_values(journal))
    report = write_report(workspace, spec, journal, idea, found)
    bands = noise.load_bands(workspace, spec)
    annotate_commits(workspace, runs, bands)
    table = runs_table(runs, journal.usage(), journal.loop_seconds(), bands, found)
    phases.notes_and_plots = time.perf_counter() - began
    console.print(table)
    console.print(f"notes: {notes}")
    for plot in plots:
        console.print(f"plot: {plot}")
    console.print(phase_table(phases.seconds(journal)))
    # one line, however long the path: a person copies it from the terminal
    console.print(f"report: {report} (open it in a browser)", soft_wrap=True, highlight=False)


def runs_table(
    runs: list[RunRecord],
    usage: Usage,
    wall_seconds: float,
    bands: Mapping[str, noise.Band] | None = None,
    found: findings.Findings | None = None,
) -> Table:
    """The closing table: one column per run attempt, one row per key metric, totals below;
    with `found`, a last column gives each metric's finding (report/findings.py).

    Runs as columns keep it readable at 80 columns with a dozen metrics; numbers are shown to
    4 significant digits here (notes.txt has them in full). The first run is the baseline: its
    seed mean ± spread where `bands` has one, and every other run's difference from that mean.
    """
    bands = bands or {}
    names = list(dict.fromkeys(name for run in runs for name in run.metrics))
    table = Table(
        title="Runs",
        caption=f"{usage.tokens:,} LLM tokens, ${usage.cost:.4f}, wall {wall_seconds / 60:.1f} min",
    )
    table.add_column("")
    for run in runs:
        table.add_column(run.name + (f" #{run.attempt}" if run.attempt else ""), justify="right")
    extra = [] if found is None else [""]
    if found is not None:
        table.add_column(f"finding ({found.run_name or 'no run'})")
    verdicts = [f"[{'green' if run.status == 'ok' else 'red'}]{run.label}[/]" for run in runs]
    table.add_row("verdict", *verdicts, *extra)
    seconds = ("" if r.seconds is None else f"{r.seconds:.0f}" for r in runs)
    table.add_row("seconds", *seconds, *extra)
    for name in names:
        band, base = bands.get(name), runs[0].metrics.get(name)
        cells = [noise.cell(run.metrics.get(name), base, band) for run in runs[1:]]
        finding = [] if found is None else [_styled(found.verdict_of(name))]
        table.add_row(name, noise.baseline_cell(base, band), *cells, *finding)
    return table


def _styled(verdict: str) -> str:
    colour = {findings.SUPPORTED: "green", findings.CONTRADICTED: "red"}.get(verdict)
    return f"[{colour}]{verdict}[/]" if colour else verdict
