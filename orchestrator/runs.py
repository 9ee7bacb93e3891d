"""One run of the experiment, sandboxed and judged: the loop's runs and confirmation seeds both
go through `execute` (run, journal, guard the protected files) and `judged` (the verdict and
what the journal keeps of it); `failed` names a run that did not finish cleanly."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator import prompts
from orchestrator.console import console
from orchestrator.trust.judge import judge, judged_artifacts, record
from orchestrator.trust.runner import RunResult, run_experiment

if TYPE_CHECKING:
    from orchestrator.session import Session
    from orchestrator.templates import TemplateSpec
    from orchestrator.trust.validate import Verdict


def execute(
    session: Session, spec: TemplateSpec, name: str, kind: str, **fields: object
) -> tuple[RunResult, str, float]:
    """Run `name` sandboxed, journal it as `kind` (with `fields`), then guard the protected
    files; returns the result, what the run tampered with, and the time limit it had."""
    timeout = session.settings.timeout or spec.timeout_seconds
    result = run_experiment(session.ws.root, spec, name, timeout=timeout, live=session.live)
    session.journal.append(
        kind,
        run_name=name,
        **fields,
        **result.record(),
    )
    tampered = guard(session, f"{name} (the experiment itself)", run_outputs=True)
    return result, tampered, timeout


def judged(session: Session, name: str, tampered: str, judged: list[dict]) -> tuple[Verdict, dict]:
    """The verdict on a finished run and what the journal keeps of it; `judged`: the VALID
    verdicts so far, whose artifacts a new run must not copy."""
    ws, spec = session.ws.root, session.spec
    earlier = judged_artifacts(ws, spec, judged)
    verdict = judge(
        ws, spec, name, earlier=earlier, tampered=tampered, code=session.code, live=session.live
    )
    fields = record(ws, spec, name, verdict) | {"commit": session.ws.repo.head.commit.hexsha}
    return verdict, fields


def failed(result: RunResult, timeout: float) -> tuple[str, str]:
    """(status, reason) of a run that did not finish cleanly; ("", "") when it did."""
    if result.timed_out:
        return "timeout", f"killed at the {timeout:.0f} s time limit"
    if result.over_quota:
        return "crashed", result.note
    if result.over_memory:
        return "crashed", result.memory_verdict()
    if result.returncode != 0:
        return "crashed", f"exit code {result.returncode}"
    return "", ""


def guard(session: Session, where: str, run_outputs: bool = False) -> str:
    """Revert protected-file changes, queue a notice for the agent; returns what changed."""
    changes = session.ws.check_protected()
    if not changes:
        return ""
    session.ws.revert(changes)
    session.journal.append("revert", files=changes.files(), why=f"{where}: {changes.describe()}")
    console.print(f"[red]reverted protected files[/] ({changes.describe()})")
    session.notice += prompts.guard(session.spec, where, changes.describe(), run_outputs)
    return changes.describe()
