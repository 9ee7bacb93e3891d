"""Research ideas (`ideas/<name>.json`) and their bundled playbooks (`ideas/playbooks/<name>.json`).

An idea says what to try and which template to start from; a playbook is a reference trajectory
of agent replies, replayed when no LLM is configured (docs/interfaces.md). Both are checked on
load so a typo fails in one line, before a workspace is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.templates import read_json_object

REPO = Path(__file__).resolve().parents[1]
IDEAS_DIR = REPO / "ideas"
PLAYBOOKS = "playbooks"
DEFAULT_TEMPLATE = "temporal_sae"
REQUIRED_TEXT = ("Name", "Title", "Experiment")
OPTIONAL_SCORES = ("Interestingness", "Feasibility", "Novelty")


class IdeaError(ValueError):
    """An idea or playbook is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Idea:
    name: str
    title: str
    experiment: str
    template: str
    path: Path
    scores: dict[str, float] = field(default_factory=dict)  # Interestingness, Feasibility, ...
    raw: dict[str, Any] = field(default_factory=dict)  # the file as written, for the report


@dataclass(frozen=True)
class Playbook:
    path: Path
    description: str
    responses: list[str]


def available(ideas_dir: Path = IDEAS_DIR) -> list[str]:
    """Names of the ideas in `ideas_dir`, sorted."""
    return sorted(p.stem for p in Path(ideas_dir).glob("*.json"))


def load_idea(name: str, ideas_dir: Path = IDEAS_DIR) -> Idea:
    """Load and check `ideas_dir/<name>.json`."""
    path = Path(ideas_dir) / f"{name}.json"
    if not path.is_file():
        names = ", ".join(available(ideas_dir)) or "none"
        raise IdeaError(f"idea '{name}' not found in {ideas_dir}; available: {names}")
    raw = read_json_object(path, IdeaError)
    for key in REQUIRED_TEXT:
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise IdeaError(f"{path}: field '{key}' is missing or not a non-empty string")
    scores = {}
    for key in OPTIONAL_SCORES:
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise IdeaError(f"{path}: field '{key}' must be a number, not {value!r}")
        if value is not None:
            scores[key] = value
    template = raw.get("Template", DEFAULT_TEMPLATE)
    if not isinstance(template, str) or not template:
        raise IdeaError(f"{path}: field 'Template' must be a template directory name")
    return Idea(
        name=name,
        title=raw["Title"],
        experiment=raw["Experiment"],
        template=template,
        path=path,
        scores=scores,
        raw=raw,
    )


def list_ideas(ideas_dir: Path = IDEAS_DIR) -> list[Idea]:
    """Every idea in `ideas_dir`; a malformed one raises, naming its file and field."""
    return [load_idea(name, ideas_dir) for name in available(ideas_dir)]


def playbook_path(name: str, ideas_dir: Path = IDEAS_DIR) -> Path:
    return Path(ideas_dir) / PLAYBOOKS / f"{name}.json"


def load_playbook(path: Path) -> Playbook:
    """Load a playbook file: {"responses": ["<assistant message>", ...], ...}."""
    raw = read_json_object(Path(path), IdeaError)
    responses = raw.get("responses")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise IdeaError(f"{path}: field 'responses' must be a list of assistant messages")
    return Playbook(Path(path), str(raw.get("description", "")), responses)
