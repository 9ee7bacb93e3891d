"""The prompts the agent gets and the commit messages of its edits, rendered by text/.

Every number a prompt quotes is read from the run's files as validated (the lab's measurements,
or facts the experiment reported, tagged), never from the LLM's prose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.agent.replay_server import END_MARKER
from orchestrator.ideas import Idea
from orchestrator.report import noise
from orchestrator.report.records import EDIT_BLOCK
from orchestrator.templates import TemplateSpec, expand_command
from orchestrator.text import render
from orchestrator.trust.redact import read_json
from orchestrator.trust.validate import REPORTED, Verdict, validate_run

FACTS_CHARS = 1500  # cap on the top-level facts of final_info.json quoted in prompts
SUMMARY_CHARS = 72  # commit subject length
EDIT_FENCES = ("```", "<<<<<<<", "=======", ">>>>>>>")  # lines of an edit block, not prose


def opening(
    workspace: Path, spec: TemplateSpec, idea: Idea, max_runs: int, max_iters: int, timeout: float
) -> str:
    """The first prompt: the idea, the template, the baseline's numbers and the rules."""
    verdict = validate_run(workspace / spec.baseline_run, spec)
    return render(
        "opening.j2",
        title=idea.title,
        experiment=idea.experiment,
        template_description=spec.description,
        editable=spec.editable_files,
        baseline=spec.baseline_run,
        metrics=verdict.metrics,
        facts=facts(workspace / spec.baseline_run, spec),
        max_runs=max_runs,
        run_command=" ".join(display_command(spec, "run_i")),
        timeout=f"{timeout:.0f}",
        result_file=spec.result_file,
        rules=[f"{r.describe()}" + (f"  ({r.message})" if r.message else "") for r in spec.rules],
        max_iters=max_iters,
    )


def after_run(
    workspace: Path,
    spec: TemplateSpec,
    name: str,
    verdict: Verdict,
    next_run: str,
    left: int,
    standing: list[str] | None = None,
) -> str:
    """After a VALID run: its numbers against the baseline's seed band, where the hypotheses
    stand (`standing`: report/findings.standing), and what to do next (`left` runs remain, the
    next being `next_run`)."""
    return render(
        "after_run.j2",
        run_name=name,
        result_file=spec.result_file,
        measured_file=spec.referee.result_file if spec.referee else None,
        n_seeds=max((b.n_seeds for b in noise.load_bands(workspace, spec).values()), default=0),
        metrics=noise.against_baseline(workspace, spec, verdict.metrics),
        reported=[metric for metric, source in verdict.sources.items() if source == REPORTED],
        facts=facts(workspace / name, spec),
        notes_file="notes.txt" if "notes.txt" in spec.editable_files else None,
        next_run=next_run if left > 0 else None,
        runs_left=left,
        end_marker=END_MARKER,
        standing=standing or [],
        baseline=spec.baseline_run,
    )


def failure(
    spec: TemplateSpec,
    name: str,
    attempt: int,
    max_iters: int,
    reason: str,
    verdict: Verdict | None,
    result: Any,
) -> str:
    """After a crash, timeout or INVALID verdict: why, the logs' last lines (scrubbed of
    secrets by the runner), and what the sandbox refused when that is what failed."""
    tails = result.stderr_tail + result.stdout_tail
    sealed = "SealedError" in tails or any(str(p) in tails for _, p in spec.referee_readable)
    return render(
        "failure.j2",
        run_name=name,
        attempt=attempt,
        max_iters=max_iters,
        reason=reason,
        verdict=verdict.summary() if verdict else None,
        result_file=spec.result_file,
        stderr=result.stderr_tail.strip(),
        stdout=result.stdout_tail.strip(),
        editable=spec.editable_files,
        sealed=sealed,
        denied="PermissionError" in tails or "Permission denied" in tails,
        memory_cap=result.memory_gib if result.over_memory else None,
    )


def no_change(spec: TemplateSpec, name: str, attempt: int, max_iters: int) -> str:
    """After a turn that changed none of the editable files."""
    return render(
        "no_change.j2",
        editable=spec.editable_files,
        attempt=attempt,
        max_iters=max_iters,
        run_name=name,
        end_marker=END_MARKER,
    )


def guard(spec: TemplateSpec, where: str, changes: str, run_outputs: bool) -> str:
    """The notice that protected files were changed and restored."""
    return render(
        "guard.j2",
        where=where,
        changes=changes,
        editable=spec.editable_files,
        run_outputs=run_outputs,
    )


def commit_message(label: str, failures: int, reply: str) -> str:
    """'<label>: <the agent's one-line summary>': its first line of prose before the first edit
    block, or, when it wrote none there, a subject derived from the edit itself."""
    summary = _summary_line(reply) or edit_subject(reply) or "(no summary)"
    if len(summary) > SUMMARY_CHARS:
        summary = summary[: SUMMARY_CHARS - 3] + "..."
    attempt = f" (attempt {failures + 1})" if failures else ""
    return f"{label}{attempt}: {summary}"


def _summary_line(reply: str) -> str:
    first_block = EDIT_BLOCK.search(reply)
    prose = reply[: first_block.start()] if first_block else reply
    return next(
        (
            line.strip("#*> ").strip()
            for line in prose.splitlines()
            if line.strip("#*> ").strip() and not line.lstrip().startswith(EDIT_FENCES)
        ),
        "",
    )


def edit_subject(reply: str) -> str:
    """'experiment.py: lr = 1e-3 (was lr = 2e-3)': the files a reply's edit blocks change and
    the first line they add (or remove); '' for a reply without edit blocks."""
    blocks = list(EDIT_BLOCK.finditer(reply))
    if not blocks:
        return ""
    files = ", ".join(dict.fromkeys(block["path"] or "a file" for block in blocks))
    for block in blocks:
        removed, added = _changed_lines(block["search"], block["replace"])
        if added:
            was = f" (was {removed[0]})" if len(removed) == len(added) == 1 else ""
            return f"{files}: {added[0]}{was}"
        if removed:
            return f"{files}: remove {removed[0]}"
    return f"{files}: no line changed"


def _changed_lines(search: str, replace: str) -> tuple[list[str], list[str]]:
    """The non-blank lines only one side of a SEARCH/REPLACE block has, without their
    trailing comments (a subject names the change, the diff keeps the why)."""
    before = [_code(line) for line in search.splitlines() if _code(line)]
    after = [_code(line) for line in replace.splitlines() if _code(line)]
    return [x for x in before if x not in after], [x for x in after if x not in before]


def _code(line: str) -> str:
    code = line.split("  # ")[0].strip()
    return code or line.strip()


def facts(run_dir: Path, spec: TemplateSpec) -> str:
    """The top-level scalars of a run's result file, as recorded (never the LLM's numbers)."""
    try:
        data = read_json(run_dir / spec.result_file)  # never via a link, secrets scrubbed
    except (OSError, json.JSONDecodeError):
        return ""
    scalars = {k: v for k, v in data.items() if isinstance(v, str | int | float | bool)}
    text = json.dumps(scalars)
    return text if len(text) <= FACTS_CHARS else text[:FACTS_CHARS] + " ..."


def display_command(spec: TemplateSpec, out_dir: str) -> list[str]:
    """The run command as the agent sees it (`python`, not the lab venv's path)."""
    return expand_command(spec.run_command, spec, out_dir, python="python")
