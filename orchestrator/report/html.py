"""report.html: one self-contained page per workspace (plus its plots/), and the batch's page.

Every number comes from the same RunRecords and the same noise cells notes.txt is rendered
from (report.records, report.noise), so the two agree by construction. Provenance comes from
the journal's verdicts and the referee's JSON; the feature dashboards from the referee's
dashboards.json, shown only when its digest is the one referee.json recorded and the verdict
judged. The agent's analysis, its own notes.txt and the plots its plot.py drew are shown
labelled as its own. The page has no script and loads nothing from the network.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from git import BadName, GitCommandError, Repo
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer

from orchestrator.journal import Attempt, Journal
from orchestrator.report import noise
from orchestrator.report.findings import CONTRADICTED, SUPPORTED, Findings
from orchestrator.report.notes import NOTES_FILE, _agent_notes, metric_rows
from orchestrator.report.records import RunRecord, collect_runs
from orchestrator.report.summary import LEGEND, IdeaSummary, best_valid, groups, rows
from orchestrator.templates import TemplateSpec
from orchestrator.text import render
from orchestrator.trust import safefs

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
BATCH_REPORT_FILE = "batch_report.html"
DASHBOARDS_FILE = "dashboards.json"  # what saelab.dashboards writes beside referee.json
DASHBOARDS_KEY = "dashboards_sha256"  # where referee.json's "referee" block records its digest
PLOTS_DIR = "plots"


@dataclass
class RunView:
    """One attempt as the page shows it: its record plus what the journal and git add."""

    record: RunRecord
    commit: str | None  # the commit the run ran
    diff: Markup  # the agent's edits for this run, highlighted
    artifact: str | None  # the referee's artifact sha256, as the verdict recorded it
    lab_version: str | None
    dashboards: dict | None
    dashboards_note: str  # why there are none, when there are none


def write_report(
    workspace: Path,
    spec: TemplateSpec,
    journal: Journal,
    idea: Mapping,
    found: Findings | None = None,
) -> Path:
    """Render text/report.html.j2 into `workspace/report.html` and return its path; `found`:
    the findings notes.txt opens with (report/findings.py), shown as a table, or none yet."""
    workspace = Path(workspace)
    runs = collect_runs(workspace, spec, journal)
    bands = noise.load_bands(workspace, spec)
    views = [_baseline_view(workspace, spec, runs[0])]
    views += [_attempt_view(workspace, spec, journal, r, a) for r, a in _pairs(runs, journal)]
    best = best_valid(journal.valid_verdicts(), spec)
    shown = {spec.baseline_run, best["run_name"] if best else None}
    page = render(
        "report.html.j2",
        title=idea.get("Title") or idea.get("Name") or spec.name,
        description=idea.get("Experiment") or idea.get("Description") or "",
        template=spec.name,
        measured=spec.referee is not None,
        findings=found,
        baseline=spec.baseline_run,
        verdict_class={SUPPORTED: "ok", CONTRADICTED: "bad"},
        table=_table(runs, list(spec.key_metrics), bands),
        n_seeds=max((band.n_seeds for band in bands.values()), default=0),
        factor=noise.NOISE_FACTOR,
        runs=views,
        dashboards=[v for v in views if v.record.name in shown and _current(v.record)],
        plots=sorted(p.relative_to(workspace).as_posix() for p in _plots(workspace)),
        usage=journal.usage(),
        turns=journal.turns(),
        agent_notes=_agent_notes(workspace / NOTES_FILE),
        diff_style=Markup(HtmlFormatter().get_style_defs(".diff")),
    )
    return safefs.write_text(workspace, REPORT_FILE, page)


def _table(
    runs: list[RunRecord], names: list[str], bands: dict[str, noise.Band]
) -> list[list[str]]:
    """notes.txt's key-metric rows (one source), the verdict row labelled."""
    table = metric_rows(runs, names, bands)
    table[1][0] = "verdict"
    return table


def _current(record: RunRecord) -> bool:
    """A VALID run whose directory still holds what its verdict judged."""
    return record.status == "ok" and not record.from_journal


def _pairs(runs: list[RunRecord], journal: Journal) -> list[tuple[RunRecord, Attempt]]:
    return list(zip(runs[1:], journal.attempts(), strict=True))


def _plots(workspace: Path) -> list[Path]:
    folder = workspace / PLOTS_DIR
    return [p for p in folder.glob("*.png") if safefs.is_regular(p)]  # the plot command's dir


def _baseline_view(workspace: Path, spec: TemplateSpec, record: RunRecord) -> RunView:
    referee = _referee_block(workspace / record.name, spec)
    return RunView(
        record=record,
        commit=None,
        diff=Markup(""),
        artifact=referee.get("artifact_sha256"),
        lab_version=referee.get("lab_version"),
        **_dashboards(workspace / record.name, referee, record),
    )


def _attempt_view(
    workspace: Path, spec: TemplateSpec, journal: Journal, record: RunRecord, attempt: Attempt
) -> RunView:
    verdict = attempt.verdict or {}
    commit = verdict.get("commit")
    if commit is None and attempt.run is not None:  # crashed: the code it ran, from the journal
        entry = journal.commit_before(attempt.run["seq"])
        commit = entry["sha"] if entry else None
    live = not record.from_journal
    referee = _referee_block(workspace / record.name, spec) if live else {}
    return RunView(
        record=record,
        commit=commit,
        diff=_diff(workspace, commit),
        artifact=verdict.get("artifact"),
        lab_version=referee.get("lab_version"),
        **(_dashboards(workspace / record.name, referee, record) if live else _none("replaced")),
    )


def _referee_block(run_dir: Path, spec: TemplateSpec) -> dict:
    """The referee's own record in the run's referee JSON ({} when there is none)."""
    if spec.referee is None:
        return {}
    try:
        data = safefs.read_json(run_dir / spec.referee.result_file)
    except (OSError, ValueError):
        return {}
    block = data.get("referee") if isinstance(data, dict) else None
    return block if isinstance(block, dict) else {}


def _dashboards(run_dir: Path, referee: dict, record: RunRecord) -> dict[str, Any]:
    """The run's dashboards when their digest is the one the referee recorded and the verdict
    judged; otherwise None and why."""
    recorded = referee.get(DASHBOARDS_KEY)
    path = run_dir / DASHBOARDS_FILE
    if not recorded:
        return _none("the referee that measured this run computed none (an older lab)")
    if DASHBOARDS_FILE in record.changed_after_verdict:
        return _none(f"{DASHBOARDS_FILE} changed after the verdict; not shown")
    try:
        raw = safefs.read_bytes(path)
    except OSError:  # safefs.Planted included: a link is never read
        return _none(f"{DASHBOARDS_FILE} is missing")
    if hashlib.sha256(raw).hexdigest() != recorded:
        return _none(f"{DASHBOARDS_FILE} does not match the digest referee.json recorded")
    return {"dashboards": json.loads(raw), "dashboards_note": ""}


def _none(why: str) -> dict[str, Any]:
    return {"dashboards": None, "dashboards_note": why}


def _diff(workspace: Path, commit: str | None) -> Markup:
    """The commit's changes against its parent, syntax-highlighted (empty when unknown)."""
    if commit is None:
        return Markup("")
    try:
        text = Repo(workspace).git.show(commit, "--format=%H %s", "--patch", "--no-color")
    except (GitCommandError, BadName, ValueError) as error:
        log.warning("no diff for %s: %s", commit, error)
        return Markup("")
    return Markup(highlight(text, DiffLexer(), HtmlFormatter(cssclass="diff")))


# ---- the batch ------------------------------------------------------------------------------


def write_batch_report(results_dir: Path, summaries: list[IdeaSummary]) -> Path:
    """results_dir/batch_report.html: per template the summary table, then one section per
    idea linking its workspace's report.html."""
    results_dir = Path(results_dir)
    sections = []
    for template, group in groups(summaries).items():
        header, body = rows(group)
        links = [_idea_link(results_dir, s) for s in group]
        sections.append({"template": template, "table": [header, *body], "ideas": links})
    page = render("batch_report.html.j2", sections=sections, legend=LEGEND)
    return safefs.write_text(results_dir.resolve(), BATCH_REPORT_FILE, page)


def _idea_link(results_dir: Path, summary: IdeaSummary) -> dict[str, Any]:
    report = summary.workspace / REPORT_FILE if summary.workspace else None
    exists = report is not None and report.is_file()
    return {
        "idea": summary.idea,
        "state": summary.state,
        "best": summary.best or "none",
        "href": _href(report, results_dir) if exists else None,
    }


def _href(report: Path, results_dir: Path) -> str:
    """A link that still works when the results folder is moved: relative where possible."""
    try:
        return report.relative_to(results_dir).as_posix()
    except ValueError:
        return report.resolve().as_uri()
