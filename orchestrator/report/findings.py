"""Findings: per hypothesis, what the measurements say, by one decision rule (RULE below).

Two arms per key metric: the baseline's seeds (the template's noise file: mean, spread, n) and
the confirmed run's seeds (the run as the agent ran it plus its confirmation seeds, each a
journaled verdict). The difference of the means is judged against an interval that holds both
arms' seed noise and, where the lab provides one, the paired per-item bootstrap CI:

    pooled = sqrt(((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2))
    interval = [d - 2 pooled, d + 2 pooled], widened to cover the CI when there is one

A hypothesis is supported when the whole interval lies on its side of its bound (0 for up and
down, the margin for not_worse), contradicted when the whole interval lies on the other side,
and otherwise not distinguishable from noise. Every number is read from the journal's verdicts
(and the template's noise file for the baseline's seeds), never from the LLM's prose.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.ideas import Hypothesis
from orchestrator.journal import Journal
from orchestrator.report import noise
from orchestrator.templates import TemplateSpec, expand_command
from orchestrator.trust import safefs
from orchestrator.trust.validate import validate_run

SUPPORTED, CONTRADICTED = "supported", "contradicted"
NOISE = "not distinguishable from noise"
UNMEASURED = "not measured"
ITEMS_FILE = "referee_items.json"  # the lab's per-item results beside referee.json
COMPARE_TIMEOUT = 600.0
RULE = (
    "The rule: d = (the confirmed run's mean) - (the baseline's mean) over their seeds; the "
    f"interval d ± {noise.NOISE_FACTOR:g} x the pooled seed standard deviation of both arms, "
    "widened to cover the lab's paired per-item 95% bootstrap CI where it gives one. A hypothesis "
    "is supported when the whole interval lies on its side of its bound (0 for up/down, the "
    "stated margin for not worse), contradicted when it lies wholly on the other side, and not "
    "distinguishable from noise otherwise. A metric moved beyond noise when its interval "
    "excludes 0."
)


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: a metric's mean over n seeds and their sample spread."""

    mean: float
    spread: float | None  # sample standard deviation; None for a single seed
    n: int

    @staticmethod
    def of(values: Sequence[float]) -> Arm:
        spread = statistics.stdev(values) if len(values) > 1 else None
        return Arm(statistics.fmean(values), spread, len(values))

    def describe(self) -> str:
        spread = "" if self.spread is None else f" ± {self.spread:.2g}"
        return f"{noise.short(self.mean)}{spread} ({self.n} seed{'s' if self.n != 1 else ''})"


@dataclass(frozen=True)
class Effect:
    """A key metric's difference between the run's arm and the baseline's, with its interval."""

    metric: str
    baseline: Arm
    run: Arm
    ci: tuple[float, float] | None = None  # the lab's paired bootstrap CI of the difference

    @property
    def difference(self) -> float:
        return self.run.mean - self.baseline.mean

    @property
    def half_width(self) -> float | None:
        """NOISE_FACTOR x the pooled seed SD; None when neither arm has a spread."""
        dof = (self.baseline.n - 1) + (self.run.n - 1)
        if dof <= 0:
            return None
        squares = sum((a.n - 1) * (a.spread or 0.0) ** 2 for a in (self.baseline, self.run))
        return noise.NOISE_FACTOR * math.sqrt(squares / dof)

    @property
    def interval(self) -> tuple[float, float] | None:
        half = self.half_width
        if half is None:
            return None
        low, high = self.difference - half, self.difference + half
        if self.ci is not None:
            low, high = min(low, self.ci[0]), max(high, self.ci[1])
        return low, high

    @property
    def beyond_noise(self) -> bool:
        return _side(self.interval, 0.0) != 0

    def describe(self) -> str:
        """'+0.012 ± 0.004 [CI -0.001..+0.02]': the difference and its uncertainty."""
        half = self.half_width
        text = f"{self.difference:+.4g}" + ("" if half is None else f" ± {half:.2g}")
        if self.ci is not None:
            text += f" [item CI {self.ci[0]:+.3g}..{self.ci[1]:+.3g}]"
        return text


@dataclass(frozen=True)
class Finding:
    hypothesis: Hypothesis
    effect: Effect | None  # None: the metric was not measured in both arms
    verdict: str


@dataclass
class Findings:
    """What notes.txt, the prompts, the closing table and the summary say was found."""

    run_name: str | None  # the run whose seeds form the second arm (None: no VALID run)
    seeds: list[int]  # its confirmation seeds (the run itself is the template's default seed)
    note: str  # how the second arm came about (confirmed, confirmation off, ...)
    rows: list[Finding] = field(default_factory=list)
    other: list[Effect] = field(default_factory=list)  # other key metrics beyond noise
    rule: str = RULE

    def verdict_of(self, metric: str) -> str:
        """The verdicts of the hypotheses on `metric`, joined; else 'moved beyond noise' for
        another effect; '' for neither."""
        verdicts = [f.verdict for f in self.rows if f.hypothesis.metric == metric]
        if not verdicts and any(e.metric == metric for e in self.other):
            verdicts = ["moved beyond noise"]
        return "; ".join(verdicts)


def decide(hypothesis: Hypothesis, effect: Effect | None) -> str:
    """The one decision rule (RULE) for one hypothesis."""
    if effect is None:
        return UNMEASURED
    bound = hypothesis.margin if hypothesis.direction == "not_worse" else 0.0
    wants_up = hypothesis.direction == "up" or (
        hypothesis.direction == "not_worse" and hypothesis.margin < 0
    )
    side = _side(effect.interval, bound)
    if side == 0:
        return NOISE
    return SUPPORTED if (side > 0) == wants_up else CONTRADICTED


def _side(interval: tuple[float, float] | None, bound: float) -> int:
    """+1: the interval lies wholly above `bound`; -1: wholly below; 0: it straddles it (or
    there is no interval: no seed spread to judge by)."""
    if interval is None:
        return 0
    return 1 if interval[0] > bound else -1 if interval[1] < bound else 0


def hypotheses_of(declared: list[Hypothesis], spec: TemplateSpec) -> list[Hypothesis]:
    """The idea's hypotheses; without any, the template's objective as one."""
    if declared or spec.objective is None:
        return list(declared)
    name, goal = spec.objective
    direction = "up" if goal == "max" else "down"
    return [Hypothesis(name, direction, "the template's objective")]


def best_run(valid: list[dict], hypotheses: list[Hypothesis]) -> dict | None:
    """The VALID verdict best by the first hypothesis (its direction), else the latest."""
    if not valid:
        return None
    if not hypotheses:
        return valid[-1]
    first = hypotheses[0]
    sign = -1.0 if first.direction == "down" or first.margin > 0 else 1.0

    def score(verdict: dict) -> float:
        value = (verdict.get("metrics") or {}).get(first.metric)
        return sign * float(value) if noise.is_number(value) else -math.inf

    return max(reversed(valid), key=score)  # a tie goes to the latest


# ---- from the journal ----------------------------------------------------------------------


def compute(
    workspace: Path, spec: TemplateSpec, journal: Journal, declared: list[Hypothesis]
) -> Findings:
    """The findings of a workspace: the confirmed run (or, before confirmation, the best VALID
    run so far, one seed) against the baseline's seeds."""
    hypotheses = hypotheses_of(declared, spec)
    plan = journal.confirmation()
    chosen = plan.run_name if plan else None
    verdict = _verdict_of(journal, chosen) or best_run(journal.valid_verdicts(), hypotheses)
    if verdict is None:
        rows = [Finding(h, None, UNMEASURED) for h in hypotheses]
        return Findings(None, [], "no VALID run to compare with the baseline", rows)
    arms = [verdict["metrics"]] + [v["metrics"] for v in (plan.verdicts if plan else [])]
    effects = effects_of(baseline_arms(workspace, spec), arms, plan.cis if plan else {})
    rows = [Finding(h, effects.get(h.metric), decide(h, effects.get(h.metric))) for h in hypotheses]
    named = {h.metric for h in hypotheses}
    other = [e for e in effects.values() if e.beyond_noise and e.metric not in named]
    seeds = plan.seeds_done if plan else []
    note = _note(plan, len(arms), journal, spec)
    return Findings(verdict["run_name"], seeds, note, rows, other)


def confirmed_values(journal: Journal) -> dict[str, list[float]]:
    """Key metric -> the confirmed run's values at each of its seeds (empty before
    confirmation): what the effect plot draws as the confirmed run's range."""
    plan = journal.confirmation()
    verdict = _verdict_of(journal, plan.run_name if plan else None)
    if verdict is None:
        return {}
    arms = [verdict["metrics"]] + [v["metrics"] for v in plan.verdicts]
    names = {name for metrics in arms for name in metrics}
    values = {n: [m.get(n) for m in arms] for n in names}
    return {n: [float(v) for v in vs] for n, vs in values.items() if all(map(noise.is_number, vs))}


def _verdict_of(journal: Journal, run_name: str | None) -> dict | None:
    found = [v for v in journal.valid_verdicts() if v["run_name"] == run_name]
    return found[-1] if found else None


def unconfirmed(confirm_seeds: int, spec: TemplateSpec) -> str:
    """Why no run is confirmed at more seeds ('' when one is)."""
    if confirm_seeds <= 0:
        return "confirmation off: --confirm-seeds 0"
    if not spec.seed_arg:
        return f"template {spec.name} declares no seed_arg"
    return ""


def _note(plan: Any, n_seeds: int, journal: Journal, spec: TemplateSpec) -> str:
    if plan is not None:
        failed = f"; seeds {plan.failed} failed" if plan.failed else ""
        return f"confirmed at {n_seeds} seeds: the run and seeds {plan.seeds_done}{failed}"
    if journal.ended is None:
        return "not confirmed yet: the best VALID run so far, one seed"
    why = unconfirmed(int((journal.started or {}).get("confirm_seeds") or 0), spec)
    return f"one seed, not confirmed ({why or 'the loop ended before confirmation'})"


def baseline_arms(workspace: Path, spec: TemplateSpec) -> dict[str, Arm]:
    """Key-metric name -> the baseline's arm: its seed band, else its one measured value."""
    bands = noise.load_bands(workspace, spec)
    arms = {name: Arm(b.mean, b.spread, b.n_seeds) for name, b in bands.items()}
    metrics = validate_run(Path(workspace) / spec.baseline_run, spec).metrics
    for name, value in metrics.items():
        if name not in arms and noise.is_number(value):
            arms[name] = Arm(float(value), None, 1)
    return arms


def effects_of(
    baseline: dict[str, Arm], runs: list[dict[str, Any]], cis: dict[str, list[float]]
) -> dict[str, Effect]:
    """Per key metric measured in the baseline and in every run of the arm: its Effect."""
    effects = {}
    for name, base in baseline.items():
        values = [run.get(name) for run in runs]
        if runs and all(noise.is_number(v) for v in values):
            ci = cis.get(name)
            effects[name] = Effect(name, base, Arm.of([float(v) for v in values]), _pair(ci))
    return effects


def _pair(ci: Any) -> tuple[float, float] | None:
    ok = isinstance(ci, list | tuple) and len(ci) == 2 and all(noise.is_number(c) for c in ci)
    return (float(ci[0]), float(ci[1])) if ok else None


def standing(
    workspace: Path, spec: TemplateSpec, journal: Journal, declared: list[Hypothesis]
) -> list[str]:
    """For the after-run prompt: per hypothesis, where each VALID run stands (one seed each)
    against the baseline's seeds, by the same rule."""
    baseline = baseline_arms(workspace, spec)
    lines = []
    for hypothesis in hypotheses_of(declared, spec):
        parts = []
        for verdict in journal.valid_verdicts():
            effect = effects_of(baseline, [verdict["metrics"]], {}).get(hypothesis.metric)
            shown = "not measured" if effect is None else effect.describe()
            parts.append(f"{verdict['run_name']} {shown}: {decide(hypothesis, effect)}")
        runs = "; ".join(parts) or "no VALID run yet"
        lines.append(f"{hypothesis.describe()} ({hypothesis.why}): {runs}")
    return lines


# ---- the lab's paired per-item CIs -----------------------------------------------------------


def paired_cis(
    workspace: Path, spec: TemplateSpec, run_dirs: list[str], baseline_dirs: list[str]
) -> dict[str, list[float]]:
    """Key-metric name -> [low, high], the lab's paired bootstrap 95% CI of mean(runs) -
    mean(baseline) (`python -m saelab.compare`, through the template's interpreter); empty
    when a run lacks the items file, one is not the file its referee.json vouches for, or the
    lab has no compare (an older lab)."""
    workspace = Path(workspace)
    files = [[workspace / d / ITEMS_FILE for d in dirs] for dirs in (run_dirs, baseline_dirs)]
    if not all(_vouched(path, spec) for group in files for path in group):
        return {}
    # -I: the lab's installed compare, never a saelab/ that agent code left in a directory
    command = expand_command(["{python}", "-I", "-m", "saelab.compare", "--a"], spec)
    command += [str(p) for p in files[0]] + ["--b"] + [str(p) for p in files[1]]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=COMPARE_TIMEOUT, check=False
        )
        metrics = json.loads(done.stdout)["metrics"] if done.returncode == 0 else {}
    except (subprocess.TimeoutExpired, json.JSONDecodeError, KeyError, TypeError):
        return {}
    by_path = {path: name for name, path in spec.key_metrics.items()}
    return {by_path[p]: m["ci95"] for p, m in metrics.items() if p in by_path and "ci95" in m}


def _vouched(items: Path, spec: TemplateSpec) -> bool:
    """The items file is a regular file whose sha256 its run's referee file records (safefs
    raises OSError for a missing file and Planted, an OSError, for a link or FIFO)."""
    if spec.referee is None:
        return False
    try:
        record = json.loads(safefs.read_text(items.parent / spec.referee.result_file))["referee"]
        return record["items_sha256"] == safefs.sha256(items)
    except (OSError, ValueError, KeyError, TypeError):
        return False


# ---- the agent's prose -----------------------------------------------------------------------

NUMBER = re.compile(r"(?<![\w.])[-+]?\d*\.\d+%?|(?<![\w.])[-+]?\d+%")
SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n+")


def flag_numbers(text: str, measured: dict[str, list[float]]) -> str:
    """The agent's prose with a flag after each sentence that names one key metric and states
    a decimal or percentage matching none of that metric's measured values or differences."""
    out = []
    for sentence in SENTENCE.split(text):
        flag = _contradiction(sentence, measured)
        out.append(sentence + (f" [NOT MEASURED SO: {flag}]" if flag else ""))
    return _rejoin(text, out)


def _rejoin(text: str, sentences: list[str]) -> str:
    """Put the sentences back with the separators the text had."""
    separators = SENTENCE.findall(text) + [""]
    return "".join(s + sep for s, sep in zip(sentences, separators, strict=False))


def _contradiction(sentence: str, measured: dict[str, list[float]]) -> str:
    lower = sentence.lower()
    named = [m for m in measured if re.search(rf"(?<!\w){re.escape(m.lower())}(?!\w)", lower)]
    numbers = NUMBER.findall(sentence)
    if len(named) != 1 or not numbers:
        return ""
    values = measured[named[0]]
    if any(_matches(n, values) for n in numbers):
        return ""
    shown = ", ".join(noise.short(v) for v in values[:6])
    return f"{named[0]} measured {shown}"


def _matches(number: str, values: list[float]) -> bool:
    """`number` (as written, to its own precision) is one of the values or their differences
    from the first (the baseline), as a fraction or a percentage."""
    percent = number.endswith("%")
    digits = number.rstrip("%")
    decimals = len(digits.partition(".")[2])
    x = float(digits) / (100 if percent else 1)
    tolerance = 0.5 * 10 ** -(decimals + (2 if percent else 0)) + 1e-12
    base = values[0] if values else 0.0
    candidates = [*values, *(v - base for v in values[1:])]
    return any(abs(abs(x) - abs(c)) <= tolerance for c in candidates)
