"""Launch the research loop: `python launch_scientist.py --idea temporal_sae`.

CLI only; the loop lives in orchestrator/loop.py. Run with any Python 3.11: the first thing this
does is build the two environments if needed and re-execute itself inside the orchestrator's.
Exit status: 0 the loop ended with at least one VALID run beyond the baseline, 1 it ended (or
stopped) without one, or the LLM provider kept failing; 2 a usage or configuration error (the
provider refusing the key or the model included); 130 Ctrl-C. A batch (--ideas, --all-ideas,
orchestrator/batch.py) exits 0 when every idea has a VALID run, else 1.
"""

from orchestrator.envs import ensure_and_reexec  # stdlib only: runs before anything third-party

ensure_and_reexec()

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from orchestrator import batch, loop, session  # noqa: E402
from orchestrator.agent.llm import API_KEY_VAR, LLMError, LLMHalt, ProviderRefused  # noqa: E402
from orchestrator.ideas import IDEAS_DIR, IdeaError, available, read_ideas  # noqa: E402
from orchestrator.journal import Journal  # noqa: E402
from orchestrator.templates import TemplateError  # noqa: E402
from orchestrator.trust.workspace import JOURNAL, WorkspaceError  # noqa: E402

USER_ERRORS = (
    IdeaError,
    LLMError,
    TemplateError,
    WorkspaceError,
    session.LoopError,
    batch.BatchError,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = p.add_argument_group("what to run")
    what.add_argument("--idea", help="idea name: ideas/<name>.json")
    what.add_argument("--list-ideas", action="store_true", help="print the available ideas")
    what.add_argument("--resume", type=Path, metavar="WORKSPACE", help="continue a workspace")
    what.add_argument(
        "--fresh",
        action="store_true",
        help="start a new workspace even if this idea has an unfinished one (default: resume it); "
        "with --ideas or --all-ideas, a new batch of new workspaces",
    )
    many = p.add_argument_group("many ideas at once, on Ray (a local instance, or a cluster)")
    many.add_argument("--ideas", type=names, metavar="A,B,C", help="a batch: one loop per idea")
    many.add_argument("--all-ideas", action="store_true", help="a batch of every idea")
    many.add_argument(
        "--workers", type=int, metavar="N", help="ideas at once (default: as many as Ray fits)"
    )
    many.add_argument(
        "--ray-address",
        metavar="auto|HOST:PORT",
        help="join a running Ray cluster (default: start a local instance for this command)",
    )
    many.add_argument(
        "--summary", type=Path, metavar="RESULTS_DIR", help="print and write a batch's summary"
    )
    llm = p.add_argument_group("which LLM (default: a provider key in the environment)")
    llm.add_argument("--model", help="litellm model name, e.g. anthropic/claude-sonnet-4-5")
    llm.add_argument(
        "--api-base",
        help=f"OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1; its key, if it needs "
        f"one, from ${API_KEY_VAR} (provider keys are never sent there)",
    )
    llm.add_argument(
        "--replay", type=Path, help="serve recorded replies: journal.jsonl or playbook"
    )
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-runs", type=int, default=session.MAX_RUNS, help="validated runs")
    limits.add_argument(
        "--max-iters",
        type=int,
        default=session.MAX_ITERS,
        help="consecutive failed tries per run before stopping",
    )
    limits.add_argument("--timeout", type=float, help="seconds per run (default: the template's)")
    limits.add_argument(
        "--confirm-seeds",
        type=int,
        metavar="N",
        help="run the best VALID run again at N more seeds before the findings (default: "
        f"{session.CONFIRM_SEEDS} by the template's lab profile, else 0; 0 turns it off)",
    )
    limits.add_argument(
        "--max-cost",
        type=float,
        default=session.MAX_COST,
        metavar="USD",
        help="stop before an LLM call would take the recorded cost past this (default: "
        "%(default)s); --resume with a higher cap goes on",
    )
    trust = p.add_argument_group("trust")
    trust.add_argument(
        "--require-sandbox",
        action="store_true",
        help="refuse to run agent code where the sandbox is incomplete (no Landlock/namespaces)",
    )
    trust.add_argument(
        "--allow-dirty-code",
        action="store_true",
        help="start although orchestrator/ or saelab/ has uncommitted changes",
    )
    dirs = p.add_argument_group("directories (tests override these)")
    dirs.add_argument("--results-dir", type=Path, default=session.RESULTS_DIR)
    dirs.add_argument(
        "--template-dir",
        type=Path,
        default=session.TEMPLATES_DIR,
        help="directory holding the templates",
    )
    dirs.add_argument("--ideas-dir", type=Path, default=IDEAS_DIR)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if args.max_runs < 1 or args.max_iters < 1:
        p.error("--max-runs and --max-iters must be at least 1")
    if not args.max_cost >= 0:
        p.error("--max-cost must be a number of US dollars, 0 or more")
    many = bool(args.ideas or args.all_ideas)
    if not (args.idea or args.resume or args.list_ideas or args.replay or many or args.summary):
        p.error(
            "pass --idea <name>, --ideas <a,b,c>, --all-ideas, --resume <workspace>, "
            "--replay <journal>, --summary <results dir> or --list-ideas"
        )
    if many and (args.idea or args.resume or args.replay or (args.ideas and args.all_ideas)):
        p.error("a batch takes one of --ideas or --all-ideas, without --idea, --resume, --replay")
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be at least 1")
    return args


def names(text: str) -> list[str]:
    """--ideas a,b,c -> ["a", "b", "c"], each once."""
    found = [name.strip() for name in text.split(",") if name.strip()]
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of idea names")
    if len(set(found)) != len(found):
        raise argparse.ArgumentTypeError(f"{text!r} names an idea twice; name each once")
    return found


def print_ideas(ideas_dir: Path) -> int:
    """Every readable idea, then each unreadable file with its error; 2 when none is readable."""
    ideas, errors = read_ideas(ideas_dir)
    for idea in ideas:
        scores = " ".join(f"{k}={v}" for k, v in idea.scores.items())
        print(f"{idea.name:24} {idea.title}  [{idea.template}] {scores}".rstrip(), flush=True)
    for err in errors:
        print(f"unreadable: {err}", file=sys.stderr)
    if not ideas:
        print(f"error: no readable idea in {ideas_dir}; pass --ideas-dir DIR", file=sys.stderr)
    return 0 if ideas else 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    if args.idea and not (args.resume or args.replay or args.fresh or args.list_ideas):
        # running the same command again after Ctrl-C continues where it stopped
        args.resume = session.find_unfinished(args.results_dir, args.idea)
        if args.resume:
            print(f"resuming the unfinished workspace {args.resume} (--fresh starts a new one)")
    settings = session.Settings(
        idea=args.idea,
        resume=args.resume,
        model=args.model,
        api_base=args.api_base,
        replay=args.replay,
        max_runs=args.max_runs,
        max_iters=args.max_iters,
        timeout=args.timeout,
        confirm_seeds=args.confirm_seeds,
        max_cost=args.max_cost,
        results_dir=args.results_dir,
        templates_dir=args.template_dir,
        ideas_dir=args.ideas_dir,
        require_sandbox=args.require_sandbox,
        allow_dirty_code=args.allow_dirty_code,
    )
    try:
        if args.list_ideas:
            return print_ideas(args.ideas_dir)
        if args.summary:
            batch.report(args.summary)
            return 0
        if args.ideas or args.all_ideas:
            ideas = args.ideas or available(args.ideas_dir)
            rows = batch.run_batch(settings, ideas, args.workers, args.ray_address, args.fresh)
            return 0 if all(row.best for row in rows) else 1
        workspace = loop.run(settings)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except ProviderRefused:  # the loop has said what to fix
        return 2
    except LLMHalt:
        return 1
    return 0 if valid_runs(workspace) else 1


def valid_runs(workspace: Path) -> int:
    """Runs beyond the baseline that passed validation, from the workspace's journal."""
    return len(Journal(workspace / JOURNAL).passed_runs())


if __name__ == "__main__":
    sys.exit(main())
