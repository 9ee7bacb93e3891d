"""Many ideas at once: one loop per idea, fanned out over Ray, on one machine or a cluster.

    python launch_scientist.py --ideas a,b,c --workers 2       # a local Ray instance
    python launch_scientist.py --all-ideas --ray-address auto  # join a running cluster

Each idea is exactly a single `--idea` run: loop.run in a Ray task, in its own workspace with
its own journal, resume and verdicts; its console output goes to <results>/logs/<idea>.log.
A task asks Ray for what its template declares (template.json "resources"), so Ray pins GPUs
and never puts two experiments on one device. The lab caches are built once, here, before the
fan-out. One idea's crash, timeout or invalid runs never stop the others.

The batch is recorded in <results>/batch.jsonl: "batch" (ideas, templates), "idea_done" (idea,
error, seconds, node) per finished task, and "batch_end" once every idea's loop has ended.
Until then the same command resumes it: an idea whose workspace ended since the batch began is
kept, an unfinished workspace resumes (session.find_unfinished), an idea never started starts.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator import loop
from orchestrator.console import console
from orchestrator.envs import ENV_SECONDS, STARTED_AT
from orchestrator.ideas import load_idea
from orchestrator.journal import Journal, stamp
from orchestrator.report import summary
from orchestrator.session import Settings, find_unfinished, setup_lab
from orchestrator.templates import TEMPLATE_FILE, TemplateSpec, load_template

BATCH_FILE = "batch.jsonl"
LOGS_DIR = "logs"
OBJECT_STORE_BYTES = 100 * 2**20  # only a small Outcome per idea crosses Ray's object store
RAY_NAMES = {"num_cpus": "CPU", "num_gpus": "GPU"}  # template resources -> Ray's resource names


class BatchError(RuntimeError):
    """The batch cannot start; the message says why and how to fix it."""


@dataclass
class Outcome:
    """What one idea's task reports back; its numbers are in its workspace."""

    idea: str
    error: str = ""  # what stopped its loop, one line; empty when the loop returned
    seconds: float = 0.0
    node: str = ""  # the host it ran on


def run_batch(
    base: Settings,
    names: list[str],
    workers: int | None = None,
    address: str | None = None,
    fresh: bool = False,
) -> list[summary.IdeaSummary]:
    """Run (or resume) every idea's loop, at most `workers` at once; returns the summary."""
    base = _absolute(base)
    specs = {name: _template(base, name) for name in names}  # a bad idea fails before anything
    results = Path(base.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    record = Journal(results / BATCH_FILE)
    since = _open_batch(record, names, {n: s.name for n, s in specs.items()}, fresh)
    todo = {}
    for name in names:
        settings = _idea_settings(base, name, since, fresh)
        if settings is None:
            console.print(f"{name}: its workspace ended earlier in this batch; kept")
        else:
            todo[name] = settings
    for spec in {specs[name].root: specs[name] for name in todo}.values():
        setup_lab(spec)  # once per template, not once per idea
    if todo:
        _fan_out(todo, specs, results, workers, address, record)
    rows = report(results)
    if all(row.state.startswith("ended") for row in rows):
        record.append("batch_end")
    return rows


def report(results_dir: Path) -> list[summary.IdeaSummary]:
    """Print and write the summary of the latest batch in `results_dir` (or, when none was run
    there, of the newest workspace of every idea in it)."""
    rows = summaries(results_dir)
    if not rows:
        raise BatchError(f"no workspaces in {results_dir}: pass the --results-dir a run wrote")
    for path in summary.write(results_dir, rows, console):
        console.print(f"summary: {path}")
    return rows


def summaries(results_dir: Path) -> list[summary.IdeaSummary]:
    """One row per idea of the latest batch; its errors are the ones journaled since it began."""
    record = Journal(Path(results_dir) / BATCH_FILE)
    batch = record.last("batch")
    if batch is None:
        found = summary.ideas_in(results_dir)
        return [
            summary.summarize(name, "", summary.newest_workspace(results_dir, name))
            for name in found
        ]
    since = stamp(batch)
    errors = {e["idea"]: e["error"] for e in record.entries("idea_done") if e["seq"] > batch["seq"]}
    return [
        summary.summarize(
            name,
            batch["templates"][name],
            summary.newest_workspace(results_dir, name, since),
            errors.get(name, ""),
        )
        for name in batch["ideas"]
    ]


# ---- planning ---------------------------------------------------------------------------------


def _absolute(settings: Settings) -> Settings:
    """Paths a worker can use whatever its working directory (on a cluster: another node's)."""
    return replace(
        settings,
        results_dir=Path(settings.results_dir).resolve(),
        templates_dir=Path(settings.templates_dir).resolve(),
        ideas_dir=Path(settings.ideas_dir).resolve(),
    )


def _template(settings: Settings, name: str) -> TemplateSpec:
    idea = load_idea(name, settings.ideas_dir)
    return load_template(Path(settings.templates_dir) / idea.template)


def _open_batch(
    record: Journal, names: list[str], templates: dict[str, str], fresh: bool
) -> datetime:
    """When the batch to run began: the unfinished one of the same ideas, else a new one."""
    last, ended = record.last("batch"), record.last("batch_end")
    unfinished = last is not None and (ended is None or ended["seq"] < last["seq"])
    if unfinished and not fresh and sorted(last["ideas"]) == sorted(names):
        console.print(f"[bold]resuming the batch begun {last['ts']}[/] (--fresh starts a new one)")
        return stamp(last)
    return stamp(record.append("batch", ideas=names, templates=templates))


def _idea_settings(base: Settings, name: str, since: datetime, fresh: bool) -> Settings | None:
    """One idea's run: resume its unfinished workspace, start it, or None when its workspace
    already ended in this batch."""
    settings = replace(base, idea=name, setup=False, live=False)
    unfinished = None if fresh else find_unfinished(base.results_dir, name)
    if unfinished:
        return replace(settings, resume=unfinished)
    if summary.newest_workspace(base.results_dir, name, since):
        return None
    return settings


# ---- the fan-out ------------------------------------------------------------------------------


def _fan_out(
    todo: dict[str, Settings],
    specs: dict[str, TemplateSpec],
    results: Path,
    workers: int | None,
    address: str | None,
    record: Journal,
) -> None:
    import ray  # here: its import costs a second that single runs and --summary need not pay

    _start_ray(ray, address)
    try:
        _check_room(ray, [specs[name] for name in todo], local=address is None)
        task = ray.remote(run_idea)
        queue, pending = list(todo.items()), {}
        limit = workers or len(queue)
        while queue or pending:
            while queue and len(pending) < limit:
                name, settings = queue.pop(0)
                log_path = results / LOGS_DIR / f"{name}.log"
                options = {"max_retries": 0, "name": f"idea {name}", **specs[name].resources}
                pending[task.options(**options).remote(settings, log_path)] = name
                asks = ", ".join(f"{n:g} {RAY_NAMES[k]}" for k, n in specs[name].resources.items())
                console.print(  # Ray starts it once those resources are free
                    f"{name}: {'resume' if settings.resume else 'start'} queued (asks for "
                    f"{asks}), log {log_path}"
                )
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            outcome = _outcome(ray, ref, pending.pop(ref))
            record.append("idea_done", **asdict(outcome))
            where = f"in {outcome.seconds:.0f} s on {outcome.node}" if outcome.node else ""
            if outcome.error:
                console.print(f"[red]{outcome.idea}: stopped {where}: {outcome.error}[/]")
            else:
                console.print(f"{outcome.idea}: loop finished {where}")
    finally:
        ray.shutdown()


def _start_ray(ray: Any, address: str | None) -> None:
    if address is None:  # "local": a new instance even where another one runs
        ray.init(
            address="local",
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=OBJECT_STORE_BYTES,
        )
        return
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as err:
        raise BatchError(
            f"cannot join the Ray cluster at {address} ({err}): start it with `ray start "
            "--head` (on every node, see README) or drop --ray-address for a local instance"
        ) from err


def _check_room(ray: Any, specs: list[TemplateSpec], local: bool) -> None:
    """A task asking more than the instance has would wait forever: say so instead."""
    have = ray.cluster_resources()
    for spec in specs:
        for key, ray_name in RAY_NAMES.items():
            need, total = spec.resources[key], have.get(ray_name, 0.0)
            if need <= total:
                continue
            problem = (
                f"template '{spec.name}' asks for {need:g} {ray_name} per idea and this Ray "
                f"instance has {total:g}"
            )
            if local:
                raise BatchError(
                    f"{problem}: lower resources.{key} in {spec.root / TEMPLATE_FILE}, or join "
                    "a cluster that has them with --ray-address"
                )
            console.print(f"[yellow]{problem}; its ideas wait until the cluster has room[/]")


def _outcome(ray: Any, ref: Any, name: str) -> Outcome:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:  # its worker died: killed, out of memory, node lost
        return Outcome(name, error=_one_line(f"{type(err).__name__}: {err}"))


# ---- inside a Ray worker ----------------------------------------------------------------------


def run_idea(settings: Settings, log_path: Path) -> Outcome:
    """One idea's loop, as a Ray task; everything it prints is appended to `log_path`."""
    started = time.time()
    os.environ[STARTED_AT], os.environ[ENV_SECONDS] = str(started), "0"  # its own wall clock
    error = ""
    with _output_to(log_path):
        try:
            loop.run(settings)
        except Exception as err:  # isolation: one idea's failure is its row, not the batch's end
            traceback.print_exc()
            error = _one_line(f"{type(err).__name__}: {err}")
    return Outcome(settings.idea or "", error, time.time() - started, socket.gethostname())


@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send file descriptors 1 and 2 to `path` (so the setup, runs and rich all land there),
    then give the worker its own back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with path.open("a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)


def _one_line(text: str) -> str:
    return " ".join(text.split())
