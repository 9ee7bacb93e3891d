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
DIRECTIONS = ("up", "down", "not_worse")
HYPOTHESIS = '{"metric": "<key metric>", "direction": "up"|"down"|"not_worse", "why": "..."}'


class IdeaError(ValueError):
    """An idea or playbook is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Hypothesis:
    """What the idea expects of one key metric against the baseline (docs/interfaces.md).

    `direction` "up"/"down": the difference from the baseline should be above/below 0;
    "not_worse": it should stay on the good side of `margin`, a signed bound on the difference
    (-0.005: at most 0.005 lower, for a metric where higher is better; +0.02: at most 0.02
    higher, for one where lower is better)."""

    metric: str  # a key-metric display name of the template
    direction: str  # one of DIRECTIONS
    why: str
    margin: float = 0.0  # not_worse only; never 0 there

    def describe(self) -> str:
        if self.direction == "not_worse":
            return f"{self.metric} not worse than {self.margin:+g}"
        return f"{self.metric} {self.direction}"


@dataclass(frozen=True)
class Idea:
    name: str
    title: str
    experiment: str
    template: str
    path: Path
    scores: dict[str, float] = field(default_factory=dict)  # Interestingness, Feasibility, ...
    raw: dict[str, Any] = field(default_factory=dict)  # the file as written, for the report
    hypotheses: list[Hypothesis] = field(default_factory=list)  # "Hypotheses"; may be empty


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
    raw = _read(path)
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
        hypotheses=parse_hypotheses(raw.get("Hypotheses", []), path),
    )


def parse_hypotheses(value: Any, path: Path) -> list[Hypothesis]:
    """The idea's "Hypotheses" list, checked; one line naming the entry and the fix."""
    if not isinstance(value, list):
        raise IdeaError(f"{path}: field 'Hypotheses' must be a list of {HYPOTHESIS}")
    return [_hypothesis(item, f"{path}: Hypotheses[{i}]") for i, item in enumerate(value)]


def _hypothesis(item: Any, where: str) -> Hypothesis:
    if not isinstance(item, dict):
        raise IdeaError(f"{where} must be an object {HYPOTHESIS}")
    for key in ("metric", "why"):
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise IdeaError(f"{where}: '{key}' must be a non-empty string")
    direction = item.get("direction")
    if direction not in DIRECTIONS:
        raise IdeaError(
            f"{where}: 'direction' is {direction!r}; use one of {', '.join(DIRECTIONS)}"
        )
    margin = item.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, int | float):
        raise IdeaError(f"{where}: 'margin' must be a number, not {margin!r}")
    if (direction == "not_worse") != (margin != 0):
        raise IdeaError(
            f"{where}: 'margin' (a signed, non-zero bound on the difference, e.g. -0.005) "
            "goes with direction 'not_worse' and only with it"
        )
    return Hypothesis(item["metric"], direction, item["why"].strip(), float(margin))


def check_hypotheses(idea: Idea, key_metrics: dict[str, str]) -> None:
    """Every hypothesis must name one of the template's key metrics (by display name)."""
    for i, hypothesis in enumerate(idea.hypotheses):
        if hypothesis.metric not in key_metrics:
            names = ", ".join(key_metrics) or "none"
            raise IdeaError(
                f"{idea.path}: Hypotheses[{i}]: metric {hypothesis.metric!r} is not a key metric "
                f"of template '{idea.template}' ({names})"
            )


def list_ideas(ideas_dir: Path = IDEAS_DIR) -> list[Idea]:
    """Every idea in `ideas_dir`; a malformed one raises, naming its file and field."""
    ideas, errors = read_ideas(ideas_dir)
    if errors:
        raise errors[0]
    return ideas


def read_ideas(ideas_dir: Path = IDEAS_DIR) -> tuple[list[Idea], list[IdeaError]]:
    """Every readable idea in `ideas_dir`, and the one-line error of each file that is not one
    (one bad file must not hide the good ones: --list-ideas)."""
    ideas, errors = [], []
    for name in available(ideas_dir):
        try:
            ideas.append(load_idea(name, ideas_dir))
        except IdeaError as err:
            errors.append(err)
    return ideas, errors


def _read(path: Path) -> dict[str, Any]:
    try:
        return read_json_object(path, IdeaError)
    except (OSError, UnicodeDecodeError) as err:  # unreadable: permissions, a directory, binary
        raise IdeaError(f"{path}: cannot be read ({err}); fix the file or remove it") from err


def playbook_path(name: str, ideas_dir: Path = IDEAS_DIR) -> Path:
    return Path(ideas_dir) / PLAYBOOKS / f"{name}.json"


def load_playbook(path: Path) -> Playbook:
    """Load a playbook file: {"responses": ["<assistant message>", ...], ...}."""
    raw = read_json_object(Path(path), IdeaError)
    responses = raw.get("responses")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise IdeaError(f"{path}: field 'responses' must be a list of assistant messages")
    return Playbook(Path(path), str(raw.get("description", "")), responses)
