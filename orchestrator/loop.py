"""The research loop: plan -> edit -> commit -> run -> validate -> feed back, up to MAX_RUNS runs.

Every step is journaled before the next begins, and the next step is always derived from the
journal, so --resume after Ctrl-C, a crash or kill -9 continues exactly where the record ends:

    last journaled step         what happens on resume
    start                       send the opening prompt
    prompt (no response)        reset the editable files to HEAD, send the same prompt again
    response                    guard + commit that reply's edits, then run
    commit                      run, unless that reply ended the loop
    run / verdict               run again (a run cut off or never judged is simply redone)
    run_done / skip             send the prompt they recorded in "next_prompt"
    end                         nothing left: rewrite the report

A run that crashes, times out or fails validation is a failure: the agent gets the stderr and
stdout tails or the verdict, the run number does not advance, and after MAX_ITERS consecutive
failures the loop stops. The loop writes one extra journal kind, "skip" (run_name, attempt,
next_prompt): an agent turn that changed nothing, which is not run again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from rich import get_console
from rich.panel import Panel

from orchestrator import llm, noise, referee, sandbox
from orchestrator.envs import ENV_SECONDS, STARTED_AT, SetupError
from orchestrator.ideas import IDEAS_DIR, Idea, load_idea
from orchestrator.journal import Journal
from orchestrator.llm import LLMChoice
from orchestrator.replay_server import END_MARKER, ReplayServer
from orchestrator.report import (
    collect_runs,
    llm_usage,
    make_plots,
    phase_table,
    summary_table,
    write_notes,
)
from orchestrator.runner import expand_command, run_experiment
from orchestrator.templates import TemplateSpec, load_template
from orchestrator.validate import Verdict, validate_run
from orchestrator.workspace import Commit, Workspace, code_digest, dirty_code, file_digests

if TYPE_CHECKING:
    from orchestrator.agent import Agent

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
TEMPLATES_DIR = REPO / "templates"
RESULTS_DIR = REPO / "results"
PROMPTS = Path(__file__).resolve().parent / "prompts"
MAX_RUNS = 5  # validated runs after the baseline
MAX_ITERS = 4  # consecutive failed tries of one run before the loop gives up
MAX_COST = 10.0  # USD of recorded LLM cost after which no further call is made
FACTS_CHARS = 1500  # cap on the top-level facts of final_info.json quoted in prompts
SUMMARY_CHARS = 72  # commit subject length

console = get_console()  # the one console the runner's live view also uses


class LoopError(RuntimeError):
    """The loop cannot start; the message says why and how to fix it."""


@dataclass
class Settings:
    """Everything launch_scientist.py's flags decide."""

    idea: str | None = None
    resume: Path | None = None
    model: str | None = None
    api_base: str | None = None
    replay: Path | None = None
    max_runs: int = MAX_RUNS
    max_iters: int = MAX_ITERS
    timeout: float | None = None  # None: the template's timeout_seconds
    max_cost: float = MAX_COST  # not recorded: a resume may raise it
    retry: llm.RetryPolicy = llm.RetryPolicy()  # patience with a failing provider
    results_dir: Path = RESULTS_DIR
    templates_dir: Path = TEMPLATES_DIR
    ideas_dir: Path = IDEAS_DIR
    live: bool | None = None  # None: a live view only on a terminal
    require_sandbox: bool = False  # refuse to run agent code where the sandbox is incomplete
    allow_dirty_code: bool = False  # start although orchestrator/ or saelab/ has local changes
    setup: bool = True  # run the template's setup_command (a batch runs it once, before)


@dataclass
class Step:
    kind: str  # "ask" | "after_turn" | "run" | "end"
    text: str = ""  # the prompt to send, the reply to process, or the end reason


@dataclass
class Session:
    ws: Workspace
    spec: TemplateSpec
    idea: Idea
    journal: Journal
    choice: LLMChoice
    settings: Settings
    run_number: int = 1  # the run being attempted
    failures: int = 0  # consecutive failed tries of run_number
    notice: str = ""  # a guard notice waiting to go out with the next prompt
    server: ReplayServer | None = field(default=None, repr=False)
    phases: dict[str, float] = field(default_factory=dict)  # this invocation's seconds by phase
    started_at: float = field(default_factory=time.time)  # epoch seconds this invocation began
    code: str = ""  # digest of the project's code (orchestrator/, saelab/) when this began

    @property
    def run_name(self) -> str:
        return f"run_{self.run_number}"

    @property
    def finished_runs(self) -> bool:
        """All runs passed; only the closing analysis turn is left."""
        return self.run_number > self.settings.max_runs

    @property
    def turn_label(self) -> str:
        return "final analysis" if self.finished_runs else self.run_name

    @property
    def live(self) -> bool:
        return console.is_terminal if self.settings.live is None else self.settings.live


def run(settings: Settings) -> Path:
    """Run (or resume) the loop; returns the workspace directory."""
    started = float(os.environ.get(STARTED_AT) or time.time())
    environments = float(os.environ.get(ENV_SECONDS) or 0.0)
    _check_code(settings)
    _check_sandbox(settings)
    code = code_digest(REPO)  # every verdict checks the code against this
    session = _resume(settings, code) if settings.resume else _start(settings, code)
    session.code = code
    session.phases["environments"] = environments
    session.started_at = started
    _announce(session)
    try:
        with _endpoint(session) as api_base:
            if session.journal.last("end") is None:
                _drive(session, _agent(session, api_base), _pending_step(session))
    except KeyboardInterrupt:
        console.print(f"\n[bold]interrupted.[/] Continue with: --resume {session.ws.root}")
        raise
    except llm.LLMHalt as err:  # the journal ends before the call that failed
        session.journal.append("halt", error=type(err).__name__, reason=str(err))
        console.print(f"[bold red]stopped:[/] {err}", soft_wrap=True)
        console.print(f"Continue with: --resume {session.ws.root}")
        if not isinstance(err, llm.SpendCapReached):
            raise
    _report(session)
    return session.ws.root


# ---- starting and resuming -------------------------------------------------------------------


def _agent(session: Session, api_base: str | None) -> Agent:
    # Imported here: aider + litellm take seconds to import, which --list-ideas need not pay.
    from orchestrator.agent import Agent

    return Agent(
        session.ws.root,
        session.spec.editable_files,
        session.choice,
        session.journal,
        api_base=api_base,
        history=_history(session.journal),
        retry=session.settings.retry,
        max_cost=session.settings.max_cost,
    )


def _start(settings: Settings, code: str) -> Session:
    name = settings.idea or _replayed_idea(settings.replay)
    if not name:
        raise LoopError("no idea given: pass --idea <name> (see --list-ideas) or --resume <dir>")
    idea = load_idea(name, settings.ideas_dir)
    template_dir = Path(settings.templates_dir) / idea.template
    if not template_dir.is_dir():
        raise LoopError(
            f"idea '{idea.name}' names template '{idea.template}', "
            f"which is not in {settings.templates_dir}: fix the idea's 'Template' field"
        )
    spec = load_template(template_dir)
    _baseline_gate(spec)
    choice = llm.choose(
        idea.name, settings.ideas_dir, settings.model, settings.api_base, settings.replay
    )
    llm.preflight(choice)
    setup_seconds = setup_lab(spec) if settings.setup else 0.0
    ws = Workspace.create(template_dir, idea.name, settings.results_dir, spec.editable_files)
    journal = Journal(ws.journal_path)
    journal.append(
        "start",
        idea=idea.name,
        template=spec.name,
        template_dir=str(template_dir.resolve()),
        ideas_dir=str(Path(settings.ideas_dir).resolve()),
        model=choice.model,
        api_base=choice.api_base,
        llm_source=choice.source,
        replay=str(choice.replay_path) if choice.replay_path else None,
        max_runs=settings.max_runs,
        max_iters=settings.max_iters,
        timeout=settings.timeout,
        pristine=ws.pristine,
    )
    _journal_setup(journal, setup_seconds, spec, code)
    session = Session(ws, load_template(ws.root), idea, journal, choice, settings)
    session.phases["lab caches"] = setup_seconds
    return session


def find_unfinished(results_dir: Path, idea: str) -> Path | None:
    """The newest workspace of `idea` that was started and never ended (Ctrl-C, kill, crash)."""
    for path in sorted(Path(results_dir).glob(f"*_{idea}*/journal.jsonl"), reverse=True):
        journal = Journal(path)
        start = journal.last("start")
        if start is not None and start.get("idea") == idea and journal.last("end") is None:
            return path.parent
    return None


def _replayed_idea(replay: Path | None) -> str | None:
    """A replayed journal knows its idea, so --replay <journal.jsonl> needs no --idea."""
    if replay is None or Path(replay).suffix != ".jsonl" or not Path(replay).is_file():
        return None
    starts = [e for e in llm.read_journal(Path(replay)) if e.get("kind") == "start"]
    return starts[0]["idea"] if starts else None


def _resume(settings: Settings, code: str) -> Session:
    ws = Workspace.open(Path(settings.resume))
    journal = Journal(ws.journal_path)
    start = journal.last("start")
    if start is None:
        raise LoopError(f"{ws.journal_path} has no start entry; it cannot be resumed")
    recorded = replace(
        settings,
        idea=start["idea"],
        ideas_dir=Path(start["ideas_dir"]),
        max_runs=start["max_runs"],
        max_iters=start["max_iters"],
        timeout=settings.timeout if settings.timeout is not None else start.get("timeout"),
    )
    idea = load_idea(recorded.idea, recorded.ideas_dir)
    spec = load_template(ws.root)
    session = Session(ws, spec, idea, journal, _resumed_choice(settings, start, journal), recorded)
    session.run_number, session.failures = _progress(journal)
    if journal.last("end") is None:  # an ended workspace only gets its report rewritten
        llm.preflight(session.choice)
        session.phases["lab caches"] = setup_lab(spec) if settings.setup else 0.0
        _journal_setup(journal, session.phases["lab caches"], spec, code)
    console.print(f"[bold]resuming[/] {ws.root} at {session.run_name}")
    return session


def _journal_setup(journal: Journal, seconds: float, spec: TemplateSpec, code: str) -> None:
    """What this invocation runs with: setup time, the sandbox's gaps, the code's digest."""
    journal.append(
        "setup",
        seconds=round(seconds, 3),
        sandbox_missing=sandbox.probe().missing(),
        network=spec.network,
        code=code,
    )


def _resumed_choice(settings: Settings, start: dict, journal: Journal) -> LLMChoice:
    """Flags given now win; otherwise the LLM the loop started with. A replay skips the
    replies already consumed by finished turns."""
    if settings.model or settings.replay:
        return llm.choose(
            start["idea"],
            Path(start["ideas_dir"]),
            settings.model,
            settings.api_base,
            settings.replay,
        )
    if start.get("replay"):
        choice = llm.replay_choice(Path(start["replay"]), start["llm_source"])
        used = len(llm.recorded_responses(journal.path)) if journal.entries("response") else 0
        return replace(choice, replay_responses=choice.replay_responses[used:])
    api_base = settings.api_base or start.get("api_base")
    return llm.choose(start["idea"], Path(start["ideas_dir"]), start["model"], api_base)


def _check_code(settings: Settings) -> None:
    """The code that measures runs must be the committed code (the journal names its digest)."""
    dirty = [] if settings.allow_dirty_code else dirty_code(REPO)
    if dirty:
        raise LoopError(
            f"the project's code has uncommitted changes ({', '.join(dirty[:3])}"
            f"{' ...' if len(dirty) > 3 else ''}): commit or stash them (or pass "
            "--allow-dirty-code), so every run is measured by a known version of the lab"
        )


def _check_sandbox(settings: Settings) -> None:
    protections = sandbox.probe()
    if protections.missing() and settings.require_sandbox:
        raise LoopError(f"{protections.summary()}; --require-sandbox refuses to run agent code")
    style = "bold red" if protections.missing() else "dim"
    console.print(f"[{style}]{protections.summary()}[/]")


def _baseline_gate(spec: TemplateSpec) -> Verdict:
    """The template's committed baseline must exist and pass its own validation; with a
    referee, it must carry the referee's record of its artifact."""
    verdict = validate_run(spec.root / spec.baseline_run, spec)
    if spec.referee and referee.artifact_digest(spec.root / spec.baseline_run, spec) is None:
        verdict.ok = False
        verdict.problems.append("the referee's record of the baseline's artifact is missing")
    if not verdict.ok:
        try:  # the real interpreter, so the command can be pasted as is
            command = shlex.join(expand_command(spec.run_command, spec, spec.baseline_run))
        except SetupError:
            command = " ".join(_display_command(spec, spec.baseline_run))
        raise LoopError(
            f"baseline {spec.root / spec.baseline_run} is missing or invalid "
            f"({'; '.join(verdict.problems)}): produce it with `cd {spec.root} && {command}` "
            "and commit it with the template"
        )
    return verdict


def setup_lab(spec: TemplateSpec) -> float:
    """Run the template's setup command (shared caches, built once); returns its seconds.

    Its output goes straight to the terminal so its own progress bars show; it is run on
    every start and resume and is expected to skip what is already built.
    """
    if not spec.setup_command:
        return 0.0
    command = expand_command(spec.setup_command, spec)
    console.rule("lab setup: shared caches")
    start = time.perf_counter()
    returncode = subprocess.run(command, cwd=spec.root, check=False).returncode
    if returncode != 0:
        raise LoopError(
            f"lab setup failed (exit {returncode}; its message is above): fix it and run again, "
            f"finished caches are kept. The command: cd {spec.root} && {shlex.join(command)}"
        )
    return time.perf_counter() - start


def _progress(journal: Journal) -> tuple[int, int]:
    """(run being attempted, its consecutive failures) from the journal."""
    passed = {e["run_name"] for e in journal.entries("run_done") if e.get("status") == "ok"}
    run_name = f"run_{len(passed) + 1}"
    failed = [
        e
        for e in journal.entries()
        if e.get("run_name") == run_name
        and (e["kind"] == "skip" or (e["kind"] == "run_done" and e.get("status") != "ok"))
    ]
    return len(passed) + 1, len(failed)


def _pending_step(session: Session) -> Step:
    """What to do next, from the last journaled step (see the module docstring)."""
    steps = [e for e in session.journal.entries() if e["kind"] in _STEP_KINDS]
    last = steps[-1] if steps else {"kind": "start"}
    kind = last["kind"]
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
    return _next_ask(session, last["next_prompt"])  # run_done / skip


_STEP_KINDS = {"start", "prompt", "response", "commit", "run", "verdict", "run_done", "skip"}


def _history(journal: Journal) -> list[tuple[str, str]]:
    """(prompt, reply) of every finished turn, to restore the agent's chat on resume."""
    pairs, prompt = [], None
    for entry in journal.entries():
        if entry["kind"] == "prompt":
            prompt = entry["text"]
        elif entry["kind"] == "response" and prompt is not None:
            pairs.append((prompt, entry["text"]))
            prompt = None
    return pairs


# ---- the loop ----------------------------------------------------------------------------------


def _drive(session: Session, agent: Agent, step: Step) -> None:
    while step.kind != "end":
        if step.kind == "ask":
            step = _ask(session, agent, step.text)
        elif step.kind == "after_turn":
            step = _after_turn(session, step.text)
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
    commit = session.ws.commit(_commit_message(session, reply)) or _unjournaled_head(session)
    if commit:
        session.journal.append("commit", sha=commit.sha, message=commit.message, files=commit.files)
        console.print(f"committed {commit.sha[:8]} {commit.message}")
    return _decide(session, reply, committed=commit is not None)


def _decide(session: Session, reply: str, committed: bool) -> Step:
    """After a turn's edits are committed: end, run, or ask again after an empty diff."""
    if END_MARKER in reply:
        exhausted = session.server is not None and session.server.exhausted
        return Step("end", "replay exhausted" if exhausted else "agent answered ALL_COMPLETED")
    if session.finished_runs:
        return Step("end", f"all {session.settings.max_runs} runs done")
    return Step("run") if committed else _no_change(session)


def _no_change(session: Session) -> Step:
    session.failures += 1
    prompt = _render(
        "no_change.j2",
        editable=session.spec.editable_files,
        attempt=session.failures,
        max_iters=session.settings.max_iters,
        run_name=session.run_name,
        end_marker=END_MARKER,
    )
    next_prompt, session.notice = session.notice + prompt, ""
    session.journal.append(
        "skip", run_name=session.run_name, attempt=session.failures, next_prompt=next_prompt
    )
    console.print(f"[yellow]no change to the editable files: {session.run_name} not run again[/]")
    return _next_ask(session, next_prompt)


def _run_and_judge(session: Session) -> Step:
    """Run the experiment, judge it, journal the outcome and the prompt that follows."""
    name, attempt = session.run_name, session.failures + 1
    console.rule(f"{name}, attempt {attempt}")
    timeout = session.settings.timeout or session.spec.timeout_seconds
    result = run_experiment(session.ws.root, session.spec, name, timeout=timeout, live=session.live)
    session.journal.append(
        "run",
        run_name=name,
        attempt=attempt,
        returncode=result.returncode,
        timed_out=result.timed_out,
        seconds=round(result.seconds, 3),
    )
    tampered = _guard(session, f"{name} (the experiment itself)", run_outputs=True)
    verdict = None
    if result.timed_out:
        status, reason = "timeout", f"killed at the {timeout:.0f} s time limit"
    elif result.over_quota:
        status, reason = "crashed", "killed: its run directory grew past the size cap"
    elif result.returncode != 0:
        status, reason = "crashed", f"exit code {result.returncode}"
    else:
        verdict = _judge(session, name, tampered)
        status, reason = ("ok", "") if verdict.ok else ("invalid", "INVALID result")
    console.print(f"{name}: [bold]{status.upper()}[/] {reason}")
    if status == "ok":
        session.run_number, session.failures = session.run_number + 1, 0
        prompt = _after_run_prompt(session, name, verdict)
    else:
        session.failures += 1
        prompt = _failure_prompt(session, name, reason, verdict, result)
    next_prompt, session.notice = session.notice + prompt, ""
    session.journal.append(
        "run_done", run_name=name, status=status, attempt=attempt, next_prompt=next_prompt
    )
    return _next_ask(session, next_prompt)


def _judge(session: Session, name: str, tampered: str) -> Verdict:
    """Measure (the referee), validate, and journal the verdict with the digests of what it
    judged, so the report can tell a file changed after its verdict."""
    ws, spec = session.ws.root, session.spec
    problems = []
    if spec.referee:
        earlier = _valid_artifacts(session)
        problems = referee.measure(ws, spec, name, earlier, live=session.live)
    verdict = validate_run(ws / name, spec)
    verdict.problems[:0] = problems
    if tampered:
        verdict.problems.append(f"the run changed protected files ({tampered})")
    if code_digest(REPO) != session.code:
        verdict.problems.append(
            "the project's code (orchestrator/, saelab/) changed during the run"
        )
    verdict.ok = not verdict.problems
    session.journal.append(
        "verdict",
        run_name=name,
        ok=verdict.ok,
        problems=verdict.problems,
        metrics=verdict.metrics,
        sources=verdict.sources,
        artifact=referee.artifact_digest(ws / name, spec) if spec.referee else None,
        files=file_digests(ws / name),
        commit=session.ws.repo.head.commit.hexsha,
    )
    return verdict


def _valid_artifacts(session: Session) -> dict[str, str]:
    """Artifact digests of the baseline and of every run judged VALID so far."""
    spec = session.spec
    found = {spec.baseline_run: referee.artifact_digest(session.ws.root / spec.baseline_run, spec)}
    found |= {
        e["run_name"]: e.get("artifact") for e in session.journal.entries("verdict") if e["ok"]
    }
    return {name: digest for name, digest in found.items() if digest}


def _next_ask(session: Session, prompt: str) -> Step:
    if session.failures >= session.settings.max_iters:
        return Step("end", f"{session.run_name} failed {session.failures} times in a row")
    return Step("ask", prompt)


def _guard(session: Session, where: str, run_outputs: bool = False) -> str:
    """Revert protected-file changes, queue a notice for the agent; returns what changed."""
    changes = session.ws.check_protected()
    if not changes:
        return ""
    session.ws.revert(changes)
    session.journal.append("revert", files=changes.files(), why=f"{where}: {changes.describe()}")
    console.print(f"[red]reverted protected files[/] ({changes.describe()})")
    session.notice += _render(
        "guard.j2",
        where=where,
        changes=changes.describe(),
        editable=session.spec.editable_files,
        run_outputs=run_outputs,
    )
    return changes.describe()


def _unjournaled_head(session: Session) -> Commit | None:
    """A commit made just before a kill -9 took the journal line with it: record it now."""
    last = session.journal.last("commit")
    head = session.ws.repo.head.commit
    if head.hexsha == (last["sha"] if last else session.ws.pristine):
        return None
    return Commit(head.hexsha, head.message.strip(), sorted(head.stats.files))


# ---- prompts -------------------------------------------------------------------------------------


def _opening_prompt(session: Session) -> str:
    spec, settings = session.spec, session.settings
    verdict = validate_run(session.ws.root / spec.baseline_run, spec)
    return _render(
        "opening.j2",
        title=session.idea.title,
        experiment=session.idea.experiment,
        template_description=spec.description,
        editable=spec.editable_files,
        baseline=spec.baseline_run,
        metrics=verdict.metrics,
        facts=_facts(session.ws.root / spec.baseline_run, spec),
        max_runs=settings.max_runs,
        run_command=" ".join(_display_command(spec, "run_i")),
        timeout=f"{settings.timeout or spec.timeout_seconds:.0f}",
        result_file=spec.result_file,
        rules=[f"{r.describe()}" + (f"  ({r.message})" if r.message else "") for r in spec.rules],
        max_iters=settings.max_iters,
    )


def _after_run_prompt(session: Session, name: str, verdict: Verdict) -> str:
    left = session.settings.max_runs - session.run_number + 1
    return _render(
        "after_run.j2",
        run_name=name,
        result_file=session.spec.result_file,
        metrics=noise.against_baseline(session.ws.root, session.spec, verdict.metrics),
        facts=_facts(session.ws.root / name, session.spec),
        notes_file="notes.txt" if "notes.txt" in session.spec.editable_files else None,
        next_run=session.run_name if left > 0 else None,
        runs_left=left,
        end_marker=END_MARKER,
    )


def _failure_prompt(
    session: Session, name: str, reason: str, verdict: Verdict | None, result: Any
) -> str:
    return _render(
        "failure.j2",
        run_name=name,
        attempt=session.failures,
        max_iters=session.settings.max_iters,
        reason=reason,
        verdict=verdict.summary() if verdict else None,
        result_file=session.spec.result_file,
        stderr=result.stderr_tail.strip(),
        stdout=result.stdout_tail.strip(),
        editable=session.spec.editable_files,
    )


def _facts(run_dir: Path, spec: TemplateSpec) -> str:
    """The top-level scalars of a run's result file, as recorded (never the LLM's numbers)."""
    try:
        data = json.loads((run_dir / spec.result_file).read_text())
    except (OSError, json.JSONDecodeError):
        return ""
    scalars = {k: v for k, v in data.items() if isinstance(v, str | int | float | bool)}
    text = json.dumps(scalars)
    return text if len(text) <= FACTS_CHARS else text[:FACTS_CHARS] + " ..."


def _display_command(spec: TemplateSpec, out_dir: str) -> list[str]:
    return expand_command(spec.run_command, spec, out_dir, python="python")


def _commit_message(session: Session, reply: str) -> str:
    """'run N: <the agent's one-line summary>' (its first line of prose)."""
    summary = next(
        (
            line.strip("#*> ").strip()
            for line in reply.splitlines()
            if line.strip()
            and not line.lstrip().startswith(("```", "<<<<<<<", "=======", ">>>>>>>"))
        ),
        "(no summary)",
    )
    if len(summary) > SUMMARY_CHARS:
        summary = summary[: SUMMARY_CHARS - 3] + "..."
    attempt = f" (attempt {session.failures + 1})" if session.failures else ""
    return f"{session.turn_label}{attempt}: {summary}"


def _render(name: str, **values: Any) -> str:
    return _JINJA.get_template(name).render(**values)


# auto_reload off: the prompts are read once, so nothing written to prompts/ later changes them
_JINJA = Environment(
    loader=FileSystemLoader(PROMPTS),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    auto_reload=False,
)
for _name in ("opening.j2", "after_run.j2", "failure.j2", "no_change.j2", "guard.j2"):
    _JINJA.get_template(_name)  # now, before any agent code has run


# ---- endpoint, announcements, report ---------------------------------------------------------


@contextmanager
def _endpoint(session: Session) -> Iterator[str | None]:
    """The api_base the agent talks to: a replay server of our own, or the chosen one."""
    if not session.choice.is_replay:
        yield session.choice.api_base
        return
    with ReplayServer(session.choice.replay_responses) as server:
        session.server = server
        yield server.url


def _announce(session: Session) -> None:
    console.print(f"[bold]idea[/] {session.idea.title}  [bold]workspace[/] {session.ws.root}")
    console.print(f"[bold]LLM[/] {session.choice.model} ({session.choice.source})")
    banner = _banner(session)
    if banner:
        console.print(Panel(banner, title="NOT A LIVE LLM", style="bold yellow"))


def _banner(session: Session) -> str | None:
    choice = session.choice
    if choice.is_playbook_fallback:
        return (
            f"No LLM is configured, so the agent's replies are the idea's bundled playbook "
            f"({choice.replay_path}), a reference trajectory, served through aider + litellm. "
            "The runs and their numbers are real. Set ANTHROPIC_API_KEY (or another provider key) "
            "or pass --model to let a live LLM do the research."
        )
    if choice.is_replay:
        return f"REPLAY: the agent's replies are the recorded ones from {choice.replay_path}."
    return None


def _report(session: Session) -> None:
    ws, spec, journal = session.ws.root, session.spec, session.journal
    start = time.perf_counter()
    notes = write_notes(ws, spec, journal, session.idea.raw, replay_banner=_banner(session))
    plots = make_plots(ws, spec, journal, live=session.live)
    tokens, cost = llm_usage(journal)
    table = summary_table(collect_runs(ws, spec, journal), tokens, cost, _wall_seconds(journal))
    session.phases["notes and plots"] = time.perf_counter() - start
    console.print(table)
    console.print(f"notes: {notes}")
    for plot in plots:
        console.print(f"plot: {plot}")
    console.print(phase_table(_phase_seconds(session)))


def _phase_seconds(session: Session) -> dict[str, float]:
    """Where this invocation's wall time went: setup, agent turns, runs, report, the rest."""
    recorded = dict(session.phases)
    order = ("environments", "lab caches")
    phases = {name: recorded.pop(name) for name in order if name in recorded}
    since = datetime.fromtimestamp(session.started_at, UTC)
    entries = [e for e in session.journal.entries() if datetime.fromisoformat(e["ts"]) >= since]
    runs = [e["seconds"] for e in entries if e["kind"] == "run"]
    phases[f"experiment runs ({len(runs)})"] = sum(runs)
    asked = None
    phases["agent turns (aider + LLM)"] = 0.0
    for entry in entries:
        if entry["kind"] == "prompt":
            asked = datetime.fromisoformat(entry["ts"])
        elif entry["kind"] == "response" and asked is not None:
            reply = datetime.fromisoformat(entry["ts"])
            phases["agent turns (aider + LLM)"] += (reply - asked).total_seconds()
            asked = None
    total = time.time() - session.started_at
    phases |= recorded  # notes and plots
    phases["other (git, validation, start-up)"] = max(0.0, total - sum(phases.values()))
    phases["total"] = total
    return phases


def _wall_seconds(journal: Journal) -> float:
    stamps = [
        datetime.fromisoformat(e["ts"]) for e in (journal.last("start"), journal.last("end")) if e
    ]
    return (stamps[-1] - stamps[0]).total_seconds() if len(stamps) == 2 else math.nan
