"""Launch the research loop: `python launch_scientist.py --idea temporal_sae`.

CLI only; the loop lives in orchestrator/loop.py. Run with any Python 3.11: the first thing this
does is build the two environments if needed and re-execute itself inside the orchestrator's.
Exit status: 0 the loop ended with at least one VALID run beyond the baseline, 1 it ended (or
stopped) without one, or the LLM provider kept failing; 2 a usage or configuration error (the
provider refusing the key or the model included); 130 Ctrl-C.
"""

from orchestrator.envs import ensure_and_reexec  # stdlib only: runs before anything third-party

ensure_and_reexec()

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from orchestrator import loop  # noqa: E402
from orchestrator.ideas import IDEAS_DIR, IdeaError, list_ideas  # noqa: E402
from orchestrator.journal import Journal  # noqa: E402
from orchestrator.llm import API_KEY_VAR, LLMError, LLMHalt, ProviderRefused  # noqa: E402
from orchestrator.templates import TemplateError  # noqa: E402
from orchestrator.workspace import JOURNAL, WorkspaceError  # noqa: E402

USER_ERRORS = (IdeaError, LLMError, TemplateError, WorkspaceError, loop.LoopError)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = p.add_argument_group("what to run")
    what.add_argument("--idea", help="idea name: ideas/<name>.json")
    what.add_argument("--list-ideas", action="store_true", help="print the available ideas")
    what.add_argument("--resume", type=Path, metavar="WORKSPACE", help="continue a workspace")
    what.add_argument(
        "--fresh",
        action="store_true",
        help="start a new workspace even if this idea has an unfinished one (default: resume it)",
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
    limits.add_argument("--max-runs", type=int, default=loop.MAX_RUNS, help="validated runs")
    limits.add_argument(
        "--max-iters",
        type=int,
        default=loop.MAX_ITERS,
        help="consecutive failed tries per run before stopping",
    )
    limits.add_argument("--timeout", type=float, help="seconds per run (default: the template's)")
    limits.add_argument(
        "--max-cost",
        type=float,
        default=loop.MAX_COST,
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
    dirs.add_argument("--results-dir", type=Path, default=loop.RESULTS_DIR)
    dirs.add_argument(
        "--template-dir",
        type=Path,
        default=loop.TEMPLATES_DIR,
        help="directory holding the templates",
    )
    dirs.add_argument("--ideas-dir", type=Path, default=IDEAS_DIR)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if args.max_runs < 1 or args.max_iters < 1:
        p.error("--max-runs and --max-iters must be at least 1")
    if not args.max_cost >= 0:
        p.error("--max-cost must be a number of US dollars, 0 or more")
    if not (args.idea or args.resume or args.list_ideas or args.replay):
        p.error("pass --idea <name>, --resume <workspace>, --replay <journal> or --list-ideas")
    return args


def print_ideas(ideas_dir: Path) -> None:
    for idea in list_ideas(ideas_dir):
        scores = " ".join(f"{k}={v}" for k, v in idea.scores.items())
        print(f"{idea.name:24} {idea.title}  [{idea.template}] {scores}".rstrip())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    if args.idea and not (args.resume or args.replay or args.fresh or args.list_ideas):
        # running the same command again after Ctrl-C continues where it stopped
        args.resume = loop.find_unfinished(args.results_dir, args.idea)
        if args.resume:
            print(f"resuming the unfinished workspace {args.resume} (--fresh starts a new one)")
    settings = loop.Settings(
        idea=args.idea,
        resume=args.resume,
        model=args.model,
        api_base=args.api_base,
        replay=args.replay,
        max_runs=args.max_runs,
        max_iters=args.max_iters,
        timeout=args.timeout,
        max_cost=args.max_cost,
        results_dir=args.results_dir,
        templates_dir=args.template_dir,
        ideas_dir=args.ideas_dir,
        require_sandbox=args.require_sandbox,
        allow_dirty_code=args.allow_dirty_code,
    )
    try:
        if args.list_ideas:
            print_ideas(args.ideas_dir)
            return 0
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
    done = Journal(workspace / JOURNAL).entries("run_done")
    return sum(entry.get("status") == "ok" for entry in done)


if __name__ == "__main__":
    sys.exit(main())
