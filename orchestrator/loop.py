"""The research loop: plan -> edit -> commit -> run -> judge -> feed back, up to max_runs runs.

Every step is journaled before the next begins, and the next step is always derived from the
journal, so --resume after Ctrl-C, a crash or kill -9 continues exactly where the record ends:

    last journaled step         what happens on resume
    start                       send the opening prompt
    prompt (no response)        reset the editable files to HEAD, send the same prompt again
    response                    guard + commit that reply's edits, then run
    commit                      run, unless that reply ended the loop
    run / verdict               run again (a run cut off or never judged is simply redone)
    run_done / skip             send the prompt they recorded in "next_prompt"
    confirm                     run the confirmation seeds that have no confirm_done yet
    end                         nothing left: rewrite the report

When the agent's runs end, the best VALID run (report/findings.best_run) is confirmed: its
committed experiment files are checked out again and it runs at each confirmation seed (the
template's seed_arg), sandboxed and judged like any run, journaled as confirm_* entries; a seed
that fails is recorded, not retried. Then the lab's paired per-item CIs, then "end".

A run that crashes, times out or fails validation is a failure: the agent gets the stderr and
stdout tails or the verdict, the run number does not advance, and after max_iters consecutive
failures the loop stops. A turn that changed nothing is journaled as "skip" and not run again.
Starting, resuming and the gates are in session.py; the prompts in prompts.py; the verdict in
trust/judge.py; the closing report in report/closing.py.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator import prompts
from orchestrator.agent import llm
from orchestrator.agent.replay_server import END_MARKER
from orchestrator.console import console
from orchestrator.envs import ENV_SECONDS, STARTED_AT
from orchestrator.report import findings
from orchestrator.report.closing import close
from orchestrator.report.timing import Phases
from orchestrator.session import (
    Session,
    Settings,
    announce,
    banner,
    check_code,
    check_sandbox,
    endpoint,
    make_agent,
    resume,
    start,
)
from orchestrator.templates import seeded
from orchestrator.trust.code import PROJECT, code_digest
from orchestrator.trust.judge import judge, judged_artifacts, record
from orchestrator.trust.runner import RunResult, run_experiment
from orchestrator.trust.workspace import Commit

if TYPE_CHECKING:
    from pathlib import Path

    from orchestrator.agent.coder import Agent
    from orchestrator.journal import Confirmation
    from orchestrator.templates import TemplateSpec
    from orchestrator.trust.validate import Verdict


@dataclass
class Step:
    kind: str  # "ask" | "after_turn" | "run" | "confirm" | "end"
    text: str = ""  # the prompt to send, the reply to process, or the end reason


def run(settings: Settings) -> Path:
    """Run (or resume) the loop; returns the workspace directory."""
    phases = Phases(
        started_at=float(os.environ.get(STARTED_AT) or time.time()),
        environments=float(os.environ.get(ENV_SECONDS) or 0.0),
    )
    check_code(settings)
    check_sandbox(settings)
    code = code_digest(PROJECT)  # every verdict checks the code against this
    session = (resume if settings.resume else start)(settings, code, phases)
    announce(session)
    try:
        with endpoint(session) as api_base:
            if session.journal.ended is None:
                _drive(session, make_agent(session, api_base), _pending_step(session))
    except KeyboardInterrupt:
        console.print(f"\n[bold]interrupted.[/] Continue with: --resume {session.ws.root}")
        raise
    except llm.LLMHalt as err:  # the journal ends before the call that failed
        session.journal.append("halt", error=type(err).__name__, reason=str(err))
        console.print(f"[bold red]stopped:[/] {err}", soft_wrap=True)
        console.print(f"Continue with: --resume {session.ws.root}")
        if not isinstance(err, llm.SpendCapReached):
            raise
    _close(session)
    return session.ws.root


def _pending_step(session: Session) -> Step:
    """What to do next, from the last journaled step (see the module docstring)."""
    kind, last = session.journal.last_step()
    if kind == "start":
        return Step("ask", _opening_prompt(session))
    if kind == "prompt":
        session.ws.reset_editable()
        return Step("ask", last["text"])
    if kind == "response":
        return Step("after_turn", last["text"])
    if kind == "commit":  # the reply may have been the last word
        return _decide(session, session.journal.last("response")["text"], committed=True)
    if kind in ("run", "verdict"):
        return Step("run")
    if kind == "confirm":
        return Step("confirm", last["reason"])
    return _next_ask(session, last["next_prompt"])  # run_done / skip


# ---- the loop ----------------------------------------------------------------------------------


def _drive(session: Session, agent: Agent, step: Step) -> None:
    while step.kind != "end":
        if step.kind == "ask":
            step = _ask(session, agent, step.text)
        elif step.kind == "after_turn":
            step = _after_turn(session, step.text)
        elif step.kind == "confirm":
            step = _confirm(session, step.text)
        else:
            step = _run_and_judge(session)
    session.journal.append("end", reason=step.text)
    console.print(f"[bold]loop finished:[/] {step.text}")


def _ask(session: Session, agent: Agent, prompt: str) -> Step:
    console.rule(f"agent turn: {session.turn_label}")
    session.journal.append("prompt", text=prompt, run_name=session.run_name)
    reply = agent.turn(prompt)
    session.journal.append("response", text=reply, run_name=session.run_name)
    return Step("after_turn", reply)


def _after_turn(session: Session, reply: str) -> Step:
    """Guard, commit, then decide: end, run, or ask again after an empty diff."""
    _guard(session, "your last edit")
    message = prompts.commit_message(session.turn_label, session.failures, reply)
    commit = session.ws.commit(message) or _unjournaled_head(session)
    if commit:
        stats = session.ws.line_counts(commit.sha)
        session.journal.append(
            "commit", sha=commit.sha, message=commit.message, files=commit.files, stats=stats
        )
        console.print(f"committed {commit.sha[:8]} {commit.message}")
    return _decide(session, reply, committed=commit is not None)


def _decide(session: Session, reply: str, committed: bool) -> Step:
    """After a turn's edits are committed: end, run, or ask again after an empty diff."""
    if END_MARKER in reply:
        exhausted = session.server is not None and session.server.exhausted
        return Step("confirm", "replay exhausted" if exhausted else "agent answered ALL_COMPLETED")
    if session.finished_runs:
        return Step("confirm", f"all {session.settings.max_runs} runs done")
    return Step("run") if committed else _no_change(session)


def _no_change(session: Session) -> Step:
    session.failures += 1
    prompt = prompts.no_change(
        session.spec, session.run_name, session.failures, session.settings.max_iters
    )
    next_prompt, session.notice = session.notice + prompt, ""
    session.journal.append(
        "skip", run_name=session.run_name, attempt=session.failures, next_prompt=next_prompt
    )
    console.print(f"[yellow]no change to the editable files: {session.run_name} not run again[/]")
    return _next_ask(session, next_prompt)


def _run_and_judge(session: Session) -> Step:
    """Run the experiment, judge it, journal the outcome and the prompt that follows."""
    ws, spec = session.ws.root, session.spec
    name, attempt = session.run_name, session.failures + 1
    console.rule(f"{name}, attempt {attempt}")
    result, tampered, timeout = _execute(session, spec, name, "run", attempt=attempt)
    verdict = None
    status, reason = _failed(result, timeout)
    if not status:
        verdict, fields = _judged(session, name, tampered, session.journal.valid_verdicts())
        session.journal.append("verdict", run_name=name, **fields)
        status, reason = ("ok", "") if verdict.ok else ("invalid", "INVALID result")
    console.print(f"{name}: [bold]{status.upper()}[/] {reason}")
    if status == "ok":
        session.run_number, session.failures = session.run_number + 1, 0
        left = session.settings.max_runs - session.run_number + 1
        standing = findings.standing(ws, spec, session.journal, session.idea.hypotheses)
        prompt = prompts.after_run(ws, spec, name, verdict, session.run_name, left, standing)
    else:
        session.failures += 1
        prompt = prompts.failure(
            spec, name, session.failures, session.settings.max_iters, reason, verdict, result
        )
    next_prompt, session.notice = session.notice + prompt, ""
    session.journal.append(
        "run_done", run_name=name, status=status, attempt=attempt, next_prompt=next_prompt
    )
    return _next_ask(session, next_prompt)


def _execute(
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
    tampered = _guard(session, f"{name} (the experiment itself)", run_outputs=True)
    return result, tampered, timeout


def _judged(session: Session, name: str, tampered: str, judged: list[dict]) -> tuple[Verdict, dict]:
    """The verdict on a finished run and what the journal keeps of it; `judged`: the VALID
    verdicts so far, whose artifacts a new run must not copy."""
    ws, spec = session.ws.root, session.spec
    earlier = judged_artifacts(ws, spec, judged)
    verdict = judge(
        ws, spec, name, earlier=earlier, tampered=tampered, code=session.code, live=session.live
    )
    fields = record(ws, spec, name, verdict) | {"commit": session.ws.repo.head.commit.hexsha}
    return verdict, fields


def _failed(result: RunResult, timeout: float) -> tuple[str, str]:
    """(status, reason) of a run that did not finish cleanly; ("", "") when it did."""
    if result.timed_out:
        return "timeout", f"killed at the {timeout:.0f} s time limit"
    if result.over_quota:
        return "crashed", "killed: its run directory grew past the size cap"
    if result.over_memory:
        return "crashed", result.memory_verdict()
    if result.returncode != 0:
        return "crashed", f"exit code {result.returncode}"
    return "", ""


def _confirm(session: Session, reason: str) -> Step:
    """Run the best VALID run again at the seeds still pending, then the lab's paired CIs."""
    plan = session.journal.confirmation() or _plan_confirmation(session, reason)
    if plan is None:
        return Step("end", reason)
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
    return Step("end", reason)


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
    result, tampered, timeout = _execute(session, spec, name, "confirm_run", of=of, seed=seed)
    status, _ = _failed(result, timeout)
    if not status:
        judged = session.journal.valid_verdicts() + session.journal.confirmation().verdicts
        verdict, fields = _judged(session, name, tampered, judged)
        session.journal.append("confirm_verdict", run_name=name, of=of, seed=seed, **fields)
        status = "ok" if verdict.ok else "invalid"
    session.journal.append("confirm_done", run_name=name, of=of, seed=seed, status=status)
    console.print(f"{name}: [bold]{status.upper()}[/]")


def _next_ask(session: Session, prompt: str) -> Step:
    if session.failures >= session.settings.max_iters:
        return Step("confirm", f"{session.run_name} failed {session.failures} times in a row")
    return Step("ask", prompt)


def _guard(session: Session, where: str, run_outputs: bool = False) -> str:
    """Revert protected-file changes, queue a notice for the agent; returns what changed."""
    changes = session.ws.check_protected()
    if not changes:
        return ""
    session.ws.revert(changes)
    session.journal.append("revert", files=changes.files(), why=f"{where}: {changes.describe()}")
    console.print(f"[red]reverted protected files[/] ({changes.describe()})")
    session.notice += prompts.guard(session.spec, where, changes.describe(), run_outputs)
    return changes.describe()


def _unjournaled_head(session: Session) -> Commit | None:
    """A commit made just before a kill -9 took the journal line with it: record it now."""
    last = session.journal.last("commit")
    head = session.ws.repo.head.commit
    if head.hexsha == (last["sha"] if last else session.ws.pristine):
        return None
    return Commit(head.hexsha, head.message.strip(), sorted(head.stats.files))


def _opening_prompt(session: Session) -> str:
    settings, spec = session.settings, session.spec
    timeout = settings.timeout or spec.timeout_seconds
    return prompts.opening(
        session.ws.root, spec, session.idea, settings.max_runs, settings.max_iters, timeout
    )


def _close(session: Session) -> None:
    close(
        session.ws.root,
        session.spec,
        session.journal,
        session.idea.raw,
        banner(session.choice),
        session.phases,
        console,
        session.live,
    )
