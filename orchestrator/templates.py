"""Template metadata: `templates/<name>/template.json` parsed and checked into a TemplateSpec.

The template, not the orchestrator, knows what a good run looks like: it declares the schema of
its result file and the domain rules a run must pass (docs/interfaces.md). Everything is checked
here, at load time, so a typo in a rule fails before any LLM money is spent.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator import envs
from orchestrator.trust.sandbox import default_memory_cap

TEMPLATE_FILE = "template.json"
TYPES = ("int", "number", "str", "bool", "object", "list", "null")
COMPARE_OPS = (">", ">=", "<", "<=", "==", "!=")
OPS = (*COMPARE_OPS, "finite", "exists")
PYTHONS = ("lab", "current")
RUN_BYTES = 2**30  # default cap on what one run may write (the cpu profile's run: ~30 MB)
WORKSPACE_BYTES = 4 * 2**30  # default cap on a workspace: its runs, scratch and history
# What one idea's loop asks of a Ray worker (orchestrator/batch.py): its experiments' needs.
RESOURCES = {"num_cpus": 1.0, "num_gpus": 0.0}
GOALS = ("max", "min")
REQUIRED = ("name", "description", "editable_files", "run_command", "schema", "rules")


class TemplateError(ValueError):
    """template.json is unusable; the message names the file, the field and the fix."""


Bad = Callable[[str, str], "TemplateError"]  # (field, fix) -> the error to raise
EnvDir = tuple[str, Path]  # (the variable that names it, "" for none; the directory)


@dataclass(frozen=True)
class Rule:
    metric: str  # dotted path into the result file
    op: str  # one of OPS
    value: Any = None  # the right-hand side of a comparison; unused by finite / exists
    message: str = ""  # why the rule matters, shown to the agent when it is violated

    def describe(self) -> str:
        unary = self.op in ("finite", "exists")
        return f"{self.metric} {self.op}" + ("" if unary else f" {self.value!r}")


@dataclass(frozen=True)
class RefereeSpec:
    """The lab's measurement of a finished run, in its own sandboxed process.

    `command` gets {python}, {run_dir} (absolute) and {out_file} (where it must write its JSON,
    outside the workspace). Its JSON's top-level blocks are the measured numbers: they replace
    whatever the experiment reported under the same names, and a reported number that differs
    from the measured one by more than abs_tolerance + rel_tolerance * |measured| makes the run
    invalid. `artifact_key` is the dotted path of the artifact's sha256 in that JSON.
    """

    command: list[str]
    result_file: str = "referee.json"
    timeout_seconds: float = 1800.0
    abs_tolerance: float = 1e-3
    rel_tolerance: float = 1e-2
    artifact_key: str = "referee.artifact_sha256"


@dataclass(frozen=True)
class TemplateSpec:
    root: Path
    name: str
    description: str
    editable_files: list[str]
    run_command: list[str]
    plot_command: list[str] | None
    setup_command: list[str] | None  # builds shared caches once, before any run; run every start
    python: str  # "lab" | "current"
    timeout_seconds: float
    result_file: str
    baseline_run: str
    schema: dict[str, str]
    rules: list[Rule]
    key_metrics: dict[str, str]
    curves_file: str | None
    referee: RefereeSpec | None = None
    noise: str | None = None  # the baseline's seed-noise band, relative to the workspace
    network: bool = False  # agent code may open TCP connections (e.g. to stream hub data)
    shared_cache: tuple[str, Path] | None = None  # (env var, dir) the sandbox overlays
    max_run_bytes: int = RUN_BYTES  # a run directory (or one file) past this is killed
    max_workspace_bytes: int = WORKSPACE_BYTES  # past this, no more runs (trust/disk.py)
    readable: list[EnvDir] = field(default_factory=list)  # more dirs sandboxed code may read
    referee_readable: list[EnvDir] = field(default_factory=list)  # the lab's sealed data
    max_memory_bytes: int = field(default_factory=default_memory_cap)  # per sandboxed process
    profile: str = ""  # the one switch its commands share as {profile} (e.g. the lab's budget)
    resources: dict[str, float] = field(default_factory=lambda: dict(RESOURCES))  # Ray's ask
    objective: tuple[str, str] | None = None  # (key metric name, "max"|"min"): the best run
    seed_arg: list[str] | None = None  # appended to run_command with {seed}: confirmation runs


def load_template(template_dir: Path) -> TemplateSpec:
    """Parse and check `template_dir/template.json`; raises TemplateError on the first problem."""
    path = Path(template_dir) / TEMPLATE_FILE
    if not path.is_file():
        raise TemplateError(f"{path}: not found; a template directory needs a {TEMPLATE_FILE}")
    raw = read_json_object(path, TemplateError)
    for name in REQUIRED:
        if name not in raw:
            raise TemplateError(f"{path}: field '{name}' is missing; add it (docs/interfaces.md)")

    def bad(field: str, fix: str) -> TemplateError:
        return TemplateError(f"{path}: field '{field}' {fix}")

    key_metrics = _key_metrics(raw, bad)
    shared_cache = _shared_cache(raw, bad)
    spec = TemplateSpec(
        root=Path(template_dir).resolve(),
        name=_typed(raw, "name", str, bad),
        description=_typed(raw, "description", str, bad),
        editable_files=_str_list(raw, "editable_files", bad),
        run_command=_str_list(raw, "run_command", bad),
        plot_command=_str_list(raw, "plot_command", bad) if raw.get("plot_command") else None,
        setup_command=_str_list(raw, "setup_command", bad) if raw.get("setup_command") else None,
        python=_typed(raw, "python", str, bad, default="lab"),
        timeout_seconds=float(_typed(raw, "timeout_seconds", (int, float), bad, default=1800)),
        result_file=_typed(raw, "result_file", str, bad, default="final_info.json"),
        baseline_run=_typed(raw, "baseline_run", str, bad, default="run_0"),
        schema=_schema(raw, bad),
        rules=_rules(raw, bad),
        key_metrics=key_metrics,
        curves_file=_typed(raw, "curves_file", str, bad, default=None),
        referee=_referee(raw, bad),
        noise=_typed(raw, "noise", str, bad, default=None),
        network=_network(raw, bad),
        shared_cache=shared_cache,
        readable=_readable(raw, "readable", bad, shared_cache),
        referee_readable=_readable(raw, "referee_readable", bad, shared_cache),
        max_memory_bytes=_max_memory(raw, bad),
        profile=_typed(raw, "profile", str, bad, default=""),
        max_run_bytes=_bytes(raw, "max_run_bytes", RUN_BYTES, bad),
        max_workspace_bytes=_bytes(raw, "max_workspace_bytes", WORKSPACE_BYTES, bad),
        resources=_resources(raw, bad),
        objective=_objective(raw, key_metrics, bad),
        seed_arg=_seed_arg(raw, bad),
    )
    if spec.python not in PYTHONS:
        raise bad("python", f"must be one of {', '.join(PYTHONS)}, not {spec.python!r}")
    if not math.isfinite(spec.timeout_seconds) or spec.timeout_seconds <= 0:
        raise bad("timeout_seconds", "must be a positive number of seconds")
    if "{out_dir}" not in " ".join(spec.run_command):
        raise bad("run_command", "must contain '{out_dir}' so each run writes its own directory")
    return spec


def read_json_object(path: Path, error: type[Exception]) -> dict[str, Any]:
    """The JSON object in `path`; `error` with a one-line fix for bad syntax or a non-object."""
    try:
        raw = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise error(f"{path}: invalid JSON ({err}); fix the syntax") from err
    if not isinstance(raw, dict):
        raise error(f"{path}: the top level must be a JSON object")
    return raw


def resolve_python(spec: TemplateSpec) -> str:
    """The interpreter that runs this template's commands (SCIENTIST_LAB_PYTHON overrides lab)."""
    return sys.executable if spec.python == "current" else envs.lab_python()


def expand_command(
    parts: list[str], spec: TemplateSpec, out_dir: str = "", **more: str
) -> list[str]:
    """A template command with {python}, {profile}, {out_dir} and any `more` filled in
    (`python=` in `more` shows the command without resolving the interpreter)."""
    values = {"profile": spec.profile, "out_dir": out_dir} | more
    if "python" not in values:
        values["python"] = resolve_python(spec)
    expanded = []
    for part in parts:
        for name, value in values.items():
            part = part.replace(f"{{{name}}}", value)
        expanded.append(part)
    return expanded


def _typed(raw: dict, field: str, kind: type | tuple, bad: Bad, default: Any = ...) -> Any:
    if field not in raw or raw[field] is None:
        if default is ...:
            raise bad(field, "is missing; add it")
        return default
    value = raw[field]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise bad(field, f"must be of type {names}, not {type(value).__name__}")
    return value


def _bytes(raw: dict, field: str, default: int, bad: Bad) -> int:
    """A positive byte count in the template's sandbox section."""
    value = (raw.get("sandbox") or {}).get(field, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise bad(f"sandbox.{field}", f"must be a positive number of bytes, not {value!r}")
    return value


def _str_list(raw: dict, field: str, bad: Bad) -> list[str]:
    value = raw[field]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise bad(field, "must be a non-empty list of strings")
    return list(value)


def _schema(raw: dict, bad: Bad) -> dict[str, str]:
    schema = raw["schema"]
    if not isinstance(schema, dict) or not schema:
        raise bad("schema", 'must be a non-empty object {"dotted.path": "type"}')
    for metric, kind in schema.items():
        if not isinstance(kind, str) or not set(kind.split("|")) <= set(TYPES):
            raise bad(f"schema.{metric}", f"has type {kind!r}; use {'|'.join(TYPES)} (or a|b)")
    return dict(schema)


def _rules(raw: dict, bad: Bad) -> list[Rule]:
    if not isinstance(raw["rules"], list):
        raise bad("rules", "must be a list of {metric, op, value, message} objects")
    rules = []
    for i, item in enumerate(raw["rules"]):
        where = f"rules[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("metric"), str):
            raise bad(where, "must be an object with a string 'metric'")
        op = item.get("op")
        if op not in OPS:
            raise bad(f"{where}.op", f"is {op!r}; use one of {' '.join(OPS)}")
        value = item.get("value")
        if op in COMPARE_OPS and (value is None or isinstance(value, (list, dict))):
            raise bad(f"{where}.value", f"is needed by op '{op}' and must be a number or string")
        ordered = op in COMPARE_OPS[:4]
        if ordered and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise bad(f"{where}.value", f"must be a number for op '{op}', not {value!r}")
        rules.append(Rule(item["metric"], op, value, str(item.get("message", ""))))
    return rules


def _key_metrics(raw: dict, bad: Bad) -> dict[str, str]:
    value = raw.get("key_metrics") or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise bad("key_metrics", 'must be an object {"display name": "dotted.path"}')
    return dict(value)


def _referee(raw: dict, bad: Bad) -> RefereeSpec | None:
    block = raw.get("referee")
    if block is None:
        return None
    if not isinstance(block, dict) or "command" not in block:
        raise bad("referee", "must be an object with a 'command' list (docs/interfaces.md)")
    command = _str_list(block, "command", lambda f, fix: bad(f"referee.{f}", fix))
    if "{out_file}" not in " ".join(command) or "{run_dir}" not in " ".join(command):
        raise bad("referee.command", "must contain '{run_dir}' and '{out_file}'")
    numbers = {
        name: float(_typed(block, name, (int, float), bad, default=default))
        for name, default in (
            ("timeout_seconds", 1800),
            ("abs_tolerance", 1e-3),
            ("rel_tolerance", 1e-2),
        )
    }
    return RefereeSpec(
        command=command,
        result_file=_typed(block, "result_file", str, bad, default="referee.json"),
        artifact_key=_typed(block, "artifact_key", str, bad, default="referee.artifact_sha256"),
        **numbers,
    )


def _network(raw: dict, bad: Bad) -> bool:
    value = (raw.get("sandbox") or {}).get("network", False)
    if not isinstance(value, bool):
        raise bad("sandbox.network", "must be true or false")
    return value


def _shared_cache(raw: dict, bad: Bad) -> EnvDir | None:
    """The lab cache agent code reads: {"env": "SAELAB_CACHE", "default": "~/.cache/saelab"}."""
    block = (raw.get("sandbox") or {}).get("shared_cache")
    if block is None:
        return None
    if not isinstance(block, dict):
        raise bad("sandbox.shared_cache", 'must be {"env": "<VAR>", "default": "<dir>"}')
    return _env_dir(block, "sandbox.shared_cache", bad, None)


def _readable(raw: dict, name: str, bad: Bad, shared: EnvDir | None) -> list[EnvDir]:
    """Dirs the sandbox adds to its read allow-list: each a path or {"env": "<VAR>", "default":
    "<dir>"}, where "{shared_cache}" in a default is the shared cache's root."""
    items = (raw.get("sandbox") or {}).get(name) or []
    if not isinstance(items, list):
        raise bad(f"sandbox.{name}", 'must be a list of paths or {"env", "default"} objects')
    root = str(shared[1]) if shared else ""
    return [_env_dir(item, f"sandbox.{name}[{i}]", bad, root) for i, item in enumerate(items)]


def _env_dir(item: Any, where: str, bad: Bad, shared_root: str | None) -> EnvDir:
    """("", path) for a path; (VAR, $VAR or its default) for {"env": VAR, "default": dir}."""
    if isinstance(item, str) and shared_root is not None:
        variable, path = "", item
    elif isinstance(item, dict) and all(isinstance(item.get(k), str) for k in ("env", "default")):
        default = item["default"].replace("{shared_cache}", shared_root or "")
        variable, path = item["env"], os.environ.get(item["env"]) or default
    else:
        raise bad(where, 'must be a path or {"env": "<VAR>", "default": "<dir>"}')
    if not Path(path).expanduser().is_absolute():
        raise bad(where, f"names {path!r}; use an absolute path (or one that starts with ~)")
    return variable, Path(path).expanduser()


def _max_memory(raw: dict, bad: Bad) -> int:
    """sandbox.max_memory_gib: what each sandboxed process may allocate (default: a share of
    physical memory that leaves the orchestrator and the OS room)."""
    gib = _typed(raw.get("sandbox") or {}, "max_memory_gib", (int, float), bad, default=None)
    if gib is None:
        return default_memory_cap()
    if not math.isfinite(gib) or gib <= 0:
        raise bad("sandbox.max_memory_gib", f"must be a positive number of GiB, not {gib!r}")
    return int(gib * 2**30)


def _resources(raw: dict, bad: Bad) -> dict[str, float]:
    """What a Ray task running one idea asks for: {"num_cpus": 2, "num_gpus": 1}."""
    block = raw.get("resources") or {}
    if not isinstance(block, dict):
        raise bad("resources", 'must be an object such as {"num_cpus": 2, "num_gpus": 0}')
    for name, value in block.items():
        if name not in RESOURCES:
            raise bad(f"resources.{name}", f"is unknown; use {' or '.join(RESOURCES)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise bad(f"resources.{name}", f"must be a number 0 or more, not {value!r}")
    if block.get("num_gpus", 0) % 1:  # Ray would let two experiments share the device
        raise bad("resources.num_gpus", "must be a whole number: a fraction shares one GPU")
    if block.get("num_cpus", 1) <= 0:
        raise bad("resources.num_cpus", "must be more than 0")
    return RESOURCES | {name: float(value) for name, value in block.items()}


def _seed_arg(raw: dict, bad: Bad) -> list[str] | None:
    """["--seed={seed}"]: how a run is repeated at another seed (the confirmation step)."""
    if raw.get("seed_arg") is None:
        return None
    parts = _str_list(raw, "seed_arg", bad)
    if "{seed}" not in " ".join(parts):
        raise bad("seed_arg", 'must contain "{seed}", e.g. ["--seed={seed}"]')
    return parts


def seeded(spec: TemplateSpec, seed: int) -> TemplateSpec:
    """The spec whose run command runs at `seed` (its seed_arg appended)."""
    extra = [part.replace("{seed}", str(seed)) for part in spec.seed_arg or []]
    return replace(spec, run_command=[*spec.run_command, *extra])


def _objective(raw: dict, key_metrics: dict[str, str], bad: Bad) -> tuple[str, str] | None:
    """{"metric": "<a key_metrics name>", "goal": "max"|"min"}: how a batch picks an idea's
    best run (without one, its latest VALID run)."""
    block = raw.get("objective")
    if block is None:
        return None
    if not isinstance(block, dict) or block.get("goal") not in GOALS:
        raise bad("objective", 'must be {"metric": "<key metric name>", "goal": "max"|"min"}')
    if block.get("metric") not in key_metrics:
        names = ", ".join(key_metrics) or "none"
        raise bad("objective.metric", f"must name a key metric ({names})")
    return block["metric"], block["goal"]
