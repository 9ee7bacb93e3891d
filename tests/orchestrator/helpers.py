"""Shared factories for the orchestrator tests. Names prefixed `core_` belong to the tests of
templates / runner / validate / journal / report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.templates import TemplateSpec, load_template

REPO = Path(__file__).resolve().parents[2]


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
