"""A loop's session: the settings, starting and resuming a workspace, the start-up gates, the
lab's shared caches and what the console says about the LLM.

    session = start(settings, code) or resume(settings, code)
    with endpoint(session) as api_base: ...   # a replay server of our own, or the chosen API

Everything here happens before the state machine (loop.py) takes its first step, or on resume
reads back what the journal recorded at the start.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from rich.panel import Panel

from orchestrator.agent import llm
from orchestrator.agent.llm import LLMChoice
from orchestrator.agent.replay_server import ReplayServer
from orchestrator.console import console
from orchestrator.envs import SetupError
from orchestrator.ideas import IDEAS_DIR, Idea, check_hypotheses, load_idea
from orchestrator.journal import Journal
from orchestrator.prompts import display_command
from orchestrator.report.timing import Phases
from orchestrator.templates import TemplateSpec, expand_command, load_template
from orchestrator.trust import referee, sandbox
from orchestrator.trust.code import dirty_code
from orchestrator.trust.validate import Verdict, validate_run
from orchestrator.trust.workspace import Workspace

if TYPE_CHECKING:
    from orchestrator.agent.coder import Agent

REPO = Path(__file__).resolve().parents[1]
TEMPLATES_DIR = REPO / "templates"
RESULTS_DIR = REPO / "results"
MAX_RUNS = 5  # validated runs after the baseline
MAX_ITERS = 4  # consecutive failed tries of one run before the loop gives up
MAX_COST = 10.0  # USD of recorded LLM cost after which no further call is made
# Confirmation seeds per lab profile (with the run itself, 3 seeds per arm like the baseline's);
# a template with another profile or none confirms only when --confirm-seeds asks.
CONFIRM_SEEDS = {"cpu": 2, "gpu": 2}


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
    confirm_seeds: int | None = None  # None: CONFIRM_SEEDS of the template's profile, else 0


@dataclass
class Session:
    ws: Workspace
    spec: TemplateSpec
    idea: Idea
    journal: Journal
    choice: LLMChoice
    settings: Settings
    phases: Phases
    code: str  # digest of the project's code (orchestrator/, saelab/) when this began
    run_number: int = 1  # the run being attempted
    failures: int = 0  # consecutive failed tries of run_number
    notice: str = ""  # a guard notice waiting to go out with the next prompt
    server: ReplayServer | None = field(default=None, repr=False)

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


# ---- starting and resuming -------------------------------------------------------------------


def start(settings: Settings, code: str, phases: Phases) -> Session:
    """A new workspace for the idea, its journal begun; the gates run first."""
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
    check_hypotheses(idea, spec.key_metrics)
    baseline_gate(spec)
    if settings.confirm_seeds is None:
        settings = replace(settings, confirm_seeds=CONFIRM_SEEDS.get(spec.profile, 0))
    choice = llm.choose(
        idea.name, settings.ideas_dir, settings.model, settings.api_base, settings.replay
    )
    llm.preflight(choice)
    phases.lab_caches = setup_lab(spec) if settings.setup else 0.0
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
        confirm_seeds=settings.confirm_seeds,
        pristine=ws.pristine,
    )
    _journal_setup(journal, phases.lab_caches, spec, code)
    return Session(ws, load_template(ws.root), idea, journal, choice, settings, phases, code)


def resume(settings: Settings, code: str, phases: Phases) -> Session:
    """The workspace `settings.resume`, with the settings its journal began with."""
    ws = Workspace.open(Path(settings.resume))
    journal = Journal(ws.journal_path)
    begun = journal.started
    if begun is None:
        raise LoopError(f"{ws.journal_path} has no start entry; it cannot be resumed")
    recorded = replace(
        settings,
        idea=begun["idea"],
        ideas_dir=Path(begun["ideas_dir"]),
        max_runs=begun["max_runs"],
        max_iters=begun["max_iters"],
        timeout=settings.timeout if settings.timeout is not None else begun.get("timeout"),
        confirm_seeds=begun.get("confirm_seeds") or 0,
    )
    idea = load_idea(recorded.idea, recorded.ideas_dir)
    spec = load_template(ws.root)
    choice = _resumed_choice(settings, begun, journal)
    session = Session(ws, spec, idea, journal, choice, recorded, phases, code)
    session.run_number = len(journal.passed_runs()) + 1
    session.failures = journal.failures_of(session.run_name)
    if journal.ended is None:  # an ended workspace only gets its report rewritten
        llm.preflight(session.choice)
        phases.lab_caches = setup_lab(spec) if settings.setup else 0.0
        _journal_setup(journal, phases.lab_caches, spec, code)
    console.print(f"[bold]resuming[/] {ws.root} at {session.run_name}")
    return session


def find_unfinished(results_dir: Path, idea: str) -> Path | None:
    """The newest workspace of `idea` that was started and never ended (Ctrl-C, kill, crash)."""
    for path in sorted(Path(results_dir).glob(f"*_{idea}*/journal.jsonl"), reverse=True):
        journal = Journal(path)
        begun = journal.started
        if begun is not None and begun.get("idea") == idea and journal.ended is None:
            return path.parent
    return None


def make_agent(session: Session, api_base: str | None) -> Agent:
    # Imported here: aider + litellm take seconds to import, which --list-ideas need not pay.
    from orchestrator.agent.coder import Agent

    return Agent(
        session.ws.root,
        session.spec.editable_files,
        session.choice,
        session.journal,
        api_base=api_base,
        history=session.journal.history(),
        retry=session.settings.retry,
        max_cost=session.settings.max_cost,
    )


def _replayed_idea(replay: Path | None) -> str | None:
    """A replayed journal knows its idea, so --replay <journal.jsonl> needs no --idea."""
    if replay is None or Path(replay).suffix != ".jsonl" or not Path(replay).is_file():
        return None
    begun = Journal(Path(replay), read_only=True).started
    return begun["idea"] if begun else None


def _journal_setup(journal: Journal, seconds: float, spec: TemplateSpec, code: str) -> None:
    """What this invocation runs with: setup time, the sandbox's gaps, the code's digest."""
    journal.append(
        "setup",
        seconds=round(seconds, 3),
        sandbox_missing=sandbox.probe().missing(),
        network=spec.network,
        code=code,
    )


def _resumed_choice(settings: Settings, begun: dict, journal: Journal) -> LLMChoice:
    """Flags given now win; otherwise the LLM the loop started with. A replay skips the
    replies already consumed by finished turns."""
    if settings.model or settings.replay:
        return llm.choose(
            begun["idea"],
            Path(begun["ideas_dir"]),
            settings.model,
            settings.api_base,
            settings.replay,
        )
    if begun.get("replay"):
        choice = llm.replay_choice(Path(begun["replay"]), begun["llm_source"])
        used = len(journal.replies_served())
        return replace(choice, replay_responses=choice.replay_responses[used:])
    api_base = settings.api_base or begun.get("api_base")
    return llm.choose(begun["idea"], Path(begun["ideas_dir"]), begun["model"], api_base)


# ---- the gates -------------------------------------------------------------------------------


def check_code(settings: Settings) -> None:
    """The code that measures runs must be the committed code (the journal names its digest)."""
    dirty = [] if settings.allow_dirty_code else dirty_code(REPO)
    if dirty:
        raise LoopError(
            f"the project's code has uncommitted changes ({', '.join(dirty[:3])}"
            f"{' ...' if len(dirty) > 3 else ''}): commit or stash them (or pass "
            "--allow-dirty-code), so every run is measured by a known version of the lab"
        )


def check_sandbox(settings: Settings) -> None:
    protections = sandbox.probe()
    if protections.missing() and settings.require_sandbox:
        raise LoopError(f"{protections.summary()}; --require-sandbox refuses to run agent code")
    style = "bold red" if protections.missing() else "dim"
    console.print(f"[{style}]{protections.summary()}[/]")


def baseline_gate(spec: TemplateSpec) -> Verdict:
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
            command = " ".join(display_command(spec, spec.baseline_run))
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
    began = time.perf_counter()
    # the lab's setup dies with the orchestrator too (a kill -9 leaves no prepare running)
    done = subprocess.run(
        command, cwd=spec.root, check=False, preexec_fn=sandbox.dies_with_parent()
    )
    returncode = done.returncode
    if returncode != 0:
        raise LoopError(
            f"lab setup failed (exit {returncode}; its message is above): fix it and run again, "
            f"finished caches are kept. The command: cd {spec.root} && {shlex.join(command)}"
        )
    return time.perf_counter() - began


# ---- the LLM's endpoint and what the console says about it -----------------------------------


@contextmanager
def endpoint(session: Session) -> Iterator[str | None]:
    """The api_base the agent talks to: a replay server of our own, or the chosen one."""
    if not session.choice.is_replay:
        yield session.choice.api_base
        return
    with ReplayServer(session.choice.replay_responses) as server:
        session.server = server
        yield server.url


def announce(session: Session) -> None:
    console.print(f"[bold]idea[/] {session.idea.title}  [bold]workspace[/] {session.ws.root}")
    console.print(f"[bold]LLM[/] {session.choice.model} ({session.choice.source})")
    text = banner(session.choice)
    if text:
        console.print(Panel(text, title="NOT A LIVE LLM", style="bold yellow"))


def banner(choice: LLMChoice) -> str | None:
    """The warning that the replies are not a live LLM's, or None when they are."""
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
