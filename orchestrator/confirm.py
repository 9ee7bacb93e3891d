"""Confirmation: when the agent's runs end, the best VALID run (report/findings.best_run) runs
again at each confirmation seed (the template's seed_arg) from its committed experiment files,
sandboxed and judged like any run and journaled as confirm_* entries; a seed that fails is
recorded, not retried. Then the lab's paired per-item CIs ("compare"). Every step is journaled
first, so a resumed confirmation runs only the seeds without a confirm_done."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.console import console
from orchestrator.report import findings
from orchestrator.runs import execute, failed, judged
from orchestrator.templates import seeded

if TYPE_CHECKING:
    from orchestrator.journal import Confirmation
    from orchestrator.session import Session


def confirm(session: Session, reason: str) -> None:
    """Run the best VALID run again at the seeds still pending, then the lab's paired CIs."""
    plan = session.journal.confirmation() or _plan_confirmation(session, reason)
    if plan is None:
        return
    if plan.pending:
        session.ws.checkout_editable(plan.plan["commit"])  # the code that run ran
        try:
            for seed in plan.pending:
                _run_seed(session, plan.run_name, seed)
        finally:
            session.ws.reset_editable()
        plan = session.journal.confirmation()
    if not plan.cis:
        runs = [plan.run_name] + [f"{plan.run_name}_seed{s}" for s in plan.seeds_done]
        cis = findings.paired_cis(session.ws.root, session.spec, runs, [session.spec.baseline_run])
        session.journal.append("compare", cis=cis)


def _plan_confirmation(session: Session, reason: str) -> Confirmation | None:
    """Journal which run is confirmed at which seeds; None (nothing journaled) when none is."""
    hypotheses = findings.hypotheses_of(session.idea.hypotheses, session.spec)
    best = findings.best_run(session.journal.valid_verdicts(), hypotheses)
    count = session.settings.confirm_seeds or 0
    why = findings.unconfirmed(count, session.spec) or ("" if best else "no VALID run")
    console.print(f"[bold]confirmation:[/] {why or best['run_name'] + f' at {count} more seeds'}")
    if why:
        return None
    seeds = list(range(1, count + 1))
    session.journal.append(
        "confirm", run_name=best["run_name"], commit=best["commit"], seeds=seeds, reason=reason
    )
    return session.journal.confirmation()


def _run_seed(session: Session, of: str, seed: int) -> None:
    """One confirmation seed of run `of`: run, guard, judge, journal; never retried."""
    name = f"{of}_seed{seed}"
    console.rule(f"{name}: {of} again at seed {seed}")
    spec = seeded(session.spec, seed)
    result, tampered, timeout = execute(session, spec, name, "confirm_run", of=of, seed=seed)
    status, _ = failed(result, timeout)
    if not status:
        earlier = session.journal.valid_verdicts() + session.journal.confirmation().verdicts
        verdict, fields = judged(session, name, tampered, earlier)
        session.journal.append("confirm_verdict", run_name=name, of=of, seed=seed, **fields)
        status = "ok" if verdict.ok else "invalid"
    session.journal.append("confirm_done", run_name=name, of=of, seed=seed, status=status)
    console.print(f"{name}: [bold]{status.upper()}[/]")
