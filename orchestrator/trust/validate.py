"""The validation gate: a run's results checked against the schema and rules its template
declares. A run that "succeeded" with 0 training steps or a NaN loss is a failure here, and the
verdict is what the agent is told. Nothing in this module knows what the metrics mean.

Two files make a run's results: the experiment's own result file (reported: training facts it
alone knows) and, when the template has a referee, the referee's (measured by the lab from the
run's artifact). The measured file's top-level blocks replace the reported ones of the same
name; a reported number that disagrees with the measured one invalidates the run, and every key
metric is tagged with where it came from.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.templates import RefereeSpec, Rule, TemplateSpec
from orchestrator.trust import safefs
from orchestrator.trust.redact import read_json

MEASURED, REPORTED = "measured", "reported"

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
    sources: dict[str, str] = field(default_factory=dict)  # key metric name -> MEASURED | REPORTED
    referee_seconds: float | None = None  # wall time of the lab's measurement (trust/judge.py)

    def summary(self) -> str:
        """Multi-line text for the agent and the journal: the verdict, problems, key metrics."""
        head = "VALID" if self.ok else f"INVALID: {len(self.problems)} problem(s)"
        lines = [head, *(f"- {p}" for p in self.problems)]
        if self.metrics:
            shown = [f"{k}={v!r}{self._mark(k)}" for k, v in self.metrics.items()]
            lines.append("key metrics: " + ", ".join(shown))
        return "\n".join(lines)

    def _mark(self, name: str) -> str:
        return " (reported by the experiment)" if self.sources.get(name) == REPORTED else ""


def get_path(data: Mapping, dotted: str) -> Any:
    """`data["a"]["b"]` for "a.b"; KeyError naming the full path when any step is absent."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def validate_result(
    result: Mapping, spec: TemplateSpec, measured: Mapping | None = None
) -> Verdict:
    """Check a parsed result (with the referee's `measured` blocks laid over it) against the
    template's schema, then its rules."""
    merged = {**result, **(measured or {})}
    problems = disagreements(result, measured, spec) if measured is not None else []
    problems += [p for path, kind in spec.schema.items() if (p := _check_type(merged, path, kind))]
    problems += [p for rule in spec.rules if (p := _check_rule(merged, rule))]
    metrics = {name: _lookup(merged, path) for name, path in spec.key_metrics.items()}
    # without a referee nothing is measured, so nothing is marked either way
    source = {name: _source(path, measured) for name, path in spec.key_metrics.items()}
    source = source if measured is not None else {}
    return Verdict(ok=not problems, problems=problems, metrics=metrics, sources=source)


def validate_run(run_dir: Path, spec: TemplateSpec) -> Verdict:
    """Validate `run_dir`'s result file (and referee file); a missing or unreadable file is an
    invalid run."""
    result = _read(Path(run_dir) / spec.result_file, "the experiment must write it to --out_dir")
    if isinstance(result, str):
        return _unreadable(spec, result)
    measured = None
    if spec.referee:
        measured = _read(Path(run_dir) / spec.referee.result_file, "the lab did not measure it")
        if isinstance(measured, str):
            return _unreadable(spec, measured)
    return validate_result(result, spec, measured)


def disagreements(reported: Mapping, measured: Mapping | None, spec: TemplateSpec) -> list[str]:
    """A reported number the referee measured differently, for every path the template names."""
    if not measured or not spec.referee:
        return []
    paths = {*spec.schema, *(r.metric for r in spec.rules), *spec.key_metrics.values()}
    found = []
    for path in sorted(p for p in paths if p.split(".")[0] in measured):
        told, seen = _lookup(reported, path), _lookup(measured, path)
        if _is_number(told) and _is_number(seen) and _differ(told, seen, spec.referee):
            found.append(
                f"{path}: the experiment reported {told!r}, the lab measured {seen!r} from the "
                "saved SAE: report only what the lab can reproduce (or nothing)"
            )
    return found


def _differ(told: float, seen: float, referee: RefereeSpec) -> bool:
    if not (math.isfinite(told) and math.isfinite(seen)):
        return not (told == seen or (math.isnan(told) and math.isnan(seen)))
    return abs(told - seen) > referee.abs_tolerance + referee.rel_tolerance * abs(seen)


def _source(path: str, measured: Mapping | None) -> str:
    return MEASURED if measured and path.split(".")[0] in measured else REPORTED


def _read(path: Path, why_missing: str) -> Mapping | str:
    """The JSON object in `path`, or the problem with it as one line."""
    where = f"{path.parent.name}/{path.name}"
    try:
        result = read_json(path)  # a run dir's: never through a link, secrets scrubbed
    except FileNotFoundError:
        return f"{where}: missing; {why_missing}"
    except safefs.Planted as err:
        return str(err)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"{where}: not valid JSON ({err})"
    except OSError as err:
        return f"{where}: unreadable ({err.strerror})"
    if not isinstance(result, Mapping):
        return f"{where}: must hold a JSON object, not {type(result).__name__}"
    return result


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
