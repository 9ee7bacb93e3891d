"""The git log as the record a researcher reviews: each run's verdict and key measured numbers
attached to the commit that ran (a git note on every attempt, an annotated tag `run_i` on the
VALID one), so `git log --decorate --notes` reads change -> result, run by run.

Rebuilt from the journal's verdicts at every close, so a kill or a resume loses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from orchestrator.report import noise
from orchestrator.report.records import RunRecord
from orchestrator.trust.validate import REPORTED
from orchestrator.trust.workspace import Workspace, WorkspaceError

log = logging.getLogger(__name__)

MAX_PROBLEMS = 3  # a note is a summary; notes.txt lists every problem


def annotate_commits(
    workspace: Path, runs: list[RunRecord], bands: Mapping[str, noise.Band]
) -> int:
    """Note every attempt on its commit, tag each run's VALID attempt; returns the notes
    written. `runs` starts with the baseline (collect_runs)."""
    try:
        ws = Workspace.open(workspace)
    except WorkspaceError as err:
        log.warning("no git story: %s", err)
        return 0
    baseline, attempts = runs[0], [run for run in runs[1:] if run.commit]
    texts: dict[str, list[str]] = {}
    for run in attempts:  # a commit may have run more than once (a retry of the same code)
        texts.setdefault(str(run.commit), []).append(run_note(run, baseline, bands))
    valid = {run.name: run for run in attempts if run.status == "ok"}  # the last VALID attempt
    for sha, notes in texts.items():
        ws.annotate(sha, "\n\n".join(notes))
    for name, run in valid.items():
        ws.annotate(str(run.commit), "\n\n".join(texts[str(run.commit)]), tag=name)
    return len(texts)


def run_note(run: RunRecord, baseline: RunRecord, bands: Mapping[str, noise.Band]) -> str:
    """'run_1 (attempt 2): VALID', its problems, then each key metric with its difference
    from the baseline's seed mean and the noise mark."""
    lines = [f"{run.name} (attempt {run.attempt or 1}): {run.label}"]
    lines += [f"- {problem}" for problem in run.problems[:MAX_PROBLEMS]]
    if len(run.problems) > MAX_PROBLEMS:
        lines.append(f"- ... {len(run.problems) - MAX_PROBLEMS} more in notes.txt")
    for name, value in run.metrics.items():
        if noise.is_number(value):
            cell = noise.cell(value, baseline.metrics.get(name), bands.get(name))
            reported = " (reported)" if run.sources.get(name) == REPORTED else ""
            lines.append(f"{name}: {cell}{reported}")
    if bands and any(noise.is_number(v) for v in run.metrics.values()):
        lines.append(
            f"(differences from {baseline.name}'s seed mean; ~ within "
            f"{noise.NOISE_FACTOR:g} seed spreads, ! beyond)"
        )
    return "\n".join(lines)
