"""The verdict on one run: the lab's measurement, the template's rules, and the checks that the
run left the protected files and the project's code alone, merged into one Verdict.

A run dir holding anything but plain files and directories (a symlink, hard link, FIFO, device:
trust/safefs) is INVALID before anything in it is measured or read: such an entry only serves
to make the unsandboxed orchestrator write or read through it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from orchestrator.templates import TemplateSpec
from orchestrator.trust import referee, safefs
from orchestrator.trust.code import PROJECT, code_digest
from orchestrator.trust.redact import run_files
from orchestrator.trust.validate import Verdict, validate_run


def judge(
    workspace: Path,
    spec: TemplateSpec,
    run_name: str,
    *,
    earlier: dict[str, str],
    tampered: str,
    code: str,
    live: bool,
) -> Verdict:
    """Measure (the referee), validate, and add what the guards found: `tampered` describes
    protected files the run changed, `code` is the project's digest when the loop began and
    `earlier` the artifact digests already judged (a copy of one is not new work)."""
    planted = planted_problems(workspace / run_name, run_name)
    problems, began = planted, time.perf_counter()
    if spec.referee and not planted:
        problems = referee.measure(workspace, spec, run_name, earlier, live=live)
    seconds = time.perf_counter() - began
    if planted:  # nothing in the run dir is read: its numbers are not worth the risk
        verdict = Verdict(False, metrics=dict.fromkeys(spec.key_metrics))
    else:
        verdict = validate_run(workspace / run_name, spec)
        verdict.referee_seconds = round(seconds, 3) if spec.referee else None
    verdict.problems[:0] = problems
    if tampered:
        verdict.problems.append(f"the run changed protected files ({tampered})")
    if code_digest(PROJECT) != code:
        verdict.problems.append(
            "the project's code (orchestrator/, saelab/) changed during the run"
        )
    verdict.ok = not verdict.problems
    return verdict


def planted_problems(run_dir: Path, run_name: str) -> list[str]:
    """One line per entry of `run_dir` that is not a plain file or directory."""
    return [
        f"{run_name}/{path} is a {kind} planted by the experiment: save plain files only "
        "(the orchestrator follows no link in a run dir)"
        for path, kind in safefs.planted(run_dir)
    ]


def record(workspace: Path, spec: TemplateSpec, run_name: str, verdict: Verdict) -> dict[str, Any]:
    """What the journal keeps of a verdict: the numbers, their sources, and the digests of what
    was judged, so the report can tell a file changed after it."""
    run_dir = workspace / run_name
    return {
        "ok": verdict.ok,
        "problems": verdict.problems,
        "metrics": verdict.metrics,
        "sources": verdict.sources,
        "artifact": referee.artifact_digest(run_dir, spec) if spec.referee else None,
        "files": run_files(run_dir),
        "referee_seconds": verdict.referee_seconds,  # the closing table's referee phase
    }


def judged_artifacts(
    workspace: Path, spec: TemplateSpec, valid_verdicts: list[dict]
) -> dict[str, str]:
    """Artifact digests of the baseline and of every run judged VALID so far."""
    found = {}
    if spec.referee:
        found[spec.baseline_run] = referee.artifact_digest(workspace / spec.baseline_run, spec)
    found |= {v["run_name"]: v.get("artifact") for v in valid_verdicts}
    return {name: digest for name, digest in found.items() if digest}
