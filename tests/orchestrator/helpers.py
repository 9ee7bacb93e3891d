"""Shared factories and paths for the orchestrator tests (fixtures live in conftest.py). Names
prefixed `core_` belong to the tests of templates / runner / validate / journal / report."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from orchestrator.journal import Journal
from orchestrator.templates import TemplateSpec, load_template

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TEMPLATES = FIXTURES / "templates"
IDEAS = FIXTURES / "ideas"
IDEA = "tiny_lr"
SCRIPTED_MODEL = "openai/scripted"


def edit_reply(summary: str, *edits: tuple[str, str, str], tail: str = "") -> str:
    """An assistant message in aider's diff format: a summary line, then one SEARCH/REPLACE
    block per (file, search, replace)."""
    blocks = [
        f"{path}\n```python\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n```"
        for path, search, replace in edits
    ]
    return "\n\n".join([summary, *blocks, tail]).strip() + "\n"


def core_template_json(**overrides: Any) -> dict:
    """A generic template.json (no SAE knowledge) run with the current interpreter."""
    raw = {
        "name": "toy",
        "description": "a toy template for the core tests",
        "editable_files": ["experiment.py"],
        "run_command": ["{python}", "experiment.py", "--out_dir={out_dir}"],
        "python": "current",
        "timeout_seconds": 30,
        "result_file": "final_info.json",
        "baseline_run": "run_0",
        "schema": {"training_steps": "int", "final_loss": "number", "eval.score": "number"},
        "rules": [
            {"metric": "training_steps", "op": ">", "value": 0, "message": "no step ran"},
            {"metric": "final_loss", "op": "finite", "message": "the loss diverged"},
            {"metric": "eval.score", "op": ">", "value": 0.5, "message": "at chance"},
        ],
        "key_metrics": {"steps": "training_steps", "loss": "final_loss", "score": "eval.score"},
        "curves_file": "loss_curve.json",
    }
    raw.update(overrides)
    return raw


def core_write_template(directory: Path, experiment: str | None = None, **overrides: Any) -> Path:
    """Write template.json (and experiment.py when given) into `directory`; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "template.json").write_text(json.dumps(core_template_json(**overrides)))
    if experiment is not None:
        (directory / "experiment.py").write_text(experiment)
    return directory


def core_spec(directory: Path, **overrides: Any) -> TemplateSpec:
    return load_template(core_write_template(directory, **overrides))


def core_result(**overrides: Any) -> dict:
    """A result that passes core_template_json's rules; override top-level keys."""
    result = {"training_steps": 120, "final_loss": 0.012345678901, "eval": {"score": 0.8731}}
    result.update(overrides)
    return result


def core_write_run(workspace: Path, name: str, result: dict | None) -> Path:
    """A run directory holding `result` as final_info.json (none when result is None)."""
    run_dir = workspace / name
    run_dir.mkdir(parents=True, exist_ok=True)
    if result is not None:
        (run_dir / "final_info.json").write_text(json.dumps(result))
    return run_dir


# ---- the loop tests: journal reads, knob edits of the tiny experiment, polling ----------


EXPERIMENT = TEMPLATES / "tiny" / "experiment.py"


def kinds(ws: Path, kind: str) -> list[dict]:
    return Journal(ws / "journal.jsonl").entries(kind)


def statuses(ws: Path) -> list[tuple[str, str]]:
    return [(e["run_name"], e["status"]) for e in kinds(ws, "run_done")]


def knob(name: str, value: str, was: str | None = None) -> tuple[str, str, str]:
    """A SEARCH/REPLACE edit setting one knob of the tiny experiment (whole lines, as aider
    needs), from the template's value or from `was`."""
    line = next(x for x in EXPERIMENT.read_text().splitlines() if x.startswith(f"{name} = "))
    comment = line.split("#", 1)[1]
    old = line if was is None else f"{name} = {was}  #{comment}"
    return ("experiment.py", old, f"{name} = {value}  #{comment}")


def set_knob(reply, summary: str, name: str, value: str, was: str | None = None) -> str:
    return reply(summary, knob(name, value, was))


def wait_for(probe, seconds: float):
    """Poll `probe` until it returns something truthy, and return that."""
    deadline = time.monotonic() + seconds
    while not (found := probe()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
    return found


# ---- processes: what a run left behind ----------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, by the parent links in /proc (the run's whole tree while the
    orchestrator lives: setsid daemons included, nothing of theirs is orphaned yet)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:  # gone while we looked
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return sorted(found)


def alive(pids: list[int]) -> list[int]:
    """Those of `pids` still running; a zombie has ended (only its reaping is left)."""
    running = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in "ZX":
            running.append(pid)
    return running


def argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def flag_readable(source: Path, templates: Path, flag: Path) -> Path:
    """A copy of the templates dir `source` at `templates` whose tiny template lets the sandbox
    read `flag`'s directory: a test's sleep flag (reads outside the workspace are sealed)."""
    shutil.copytree(source, templates)
    spec = templates / "tiny" / "template.json"
    raw = json.loads(spec.read_text())
    raw["sandbox"] = raw.get("sandbox", {}) | {"readable": [str(flag.parent)]}
    spec.write_text(json.dumps(raw))
    return templates
