"""The validation gate: a run's result file checked against the schema and rules its template
declares. A run that "succeeded" with 0 training steps or a NaN loss is a failure here, and the
verdict is what the agent is told. Nothing in this module knows what the metrics mean.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.templates import Rule, TemplateSpec

COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    # an integral float (100.0) is accepted: json writers of numpy scalars produce those
    if isinstance(value, float):
        return math.isfinite(value) and value.is_integer()
    return _is_number(value)


TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": _is_int,
    # NaN and inf are numbers by type; the template's "finite" rules are what reject them
    "number": _is_number,
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, Mapping),
    "list": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


@dataclass
class Verdict:
    ok: bool
    problems: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # key metric name -> value or None

    def summary(self) -> str:
        """Multi-line text for the agent and the journal: the verdict, problems, key metrics."""
        head = "VALID" if self.ok else f"INVALID: {len(self.problems)} problem(s)"
        lines = [head, *(f"- {p}" for p in self.problems)]
        if self.metrics:
            lines.append("key metrics: " + ", ".join(f"{k}={v!r}" for k, v in self.metrics.items()))
        return "\n".join(lines)


def get_path(data: Mapping, dotted: str) -> Any:
    """`data["a"]["b"]` for "a.b"; KeyError naming the full path when any step is absent."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def validate_result(result: Mapping, spec: TemplateSpec) -> Verdict:
    """Check a parsed result against the template's schema, then its rules."""
    problems = [p for path, kind in spec.schema.items() if (p := _check_type(result, path, kind))]
    problems += [p for rule in spec.rules if (p := _check_rule(result, rule))]
    metrics = {name: _lookup(result, path) for name, path in spec.key_metrics.items()}
    return Verdict(ok=not problems, problems=problems, metrics=metrics)


def validate_run(run_dir: Path, spec: TemplateSpec) -> Verdict:
    """Validate `run_dir/<result_file>`; a missing or unreadable file is an invalid run."""
    path = Path(run_dir) / spec.result_file
    where = f"{path.parent.name}/{path.name}"
    if not path.is_file():
        return _unreadable(spec, f"{where}: missing; the experiment must write it to --out_dir")
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return _unreadable(spec, f"{where}: not valid JSON ({err})")
    if not isinstance(result, Mapping):
        return _unreadable(spec, f"{where}: must hold a JSON object, not {type(result).__name__}")
    return validate_result(result, spec)


def _unreadable(spec: TemplateSpec, problem: str) -> Verdict:
    return Verdict(False, [problem], {name: None for name in spec.key_metrics})


def _lookup(result: Mapping, path: str) -> Any:
    try:
        return get_path(result, path)
    except KeyError:
        return None


def _check_type(result: Mapping, path: str, kind: str) -> str | None:
    try:
        value = get_path(result, path)
    except KeyError:
        return f"{path}: missing (schema requires {kind})"
    if any(TYPE_CHECKS[k](value) for k in kind.split("|")):
        return None
    return f"{path}: expected {kind}, got {type(value).__name__} {_short(value)}"


def _check_rule(result: Mapping, rule: Rule) -> str | None:
    try:
        value = get_path(result, rule.metric)
    except KeyError:
        return _problem(rule, "missing")
    if rule.op == "exists" or (rule.op == "finite" and _is_number(value) and math.isfinite(value)):
        return None
    if rule.op == "finite":
        return _problem(rule, _short(value))
    if _is_number(value) != _is_number(rule.value):
        return _problem(rule, f"{_short(value)} (not comparable with {rule.value!r})")
    # NaN and inf satisfy no comparison: a diverged run must never pass a threshold
    if _is_number(value) and not math.isfinite(value):
        return _problem(rule, _short(value))
    return None if COMPARE[rule.op](value, rule.value) else _problem(rule, _short(value))


def _problem(rule: Rule, seen: str) -> str:
    why = f": {rule.message}" if rule.message else ""
    return f"{rule.metric} = {seen} violates '{rule.describe()}'{why}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
