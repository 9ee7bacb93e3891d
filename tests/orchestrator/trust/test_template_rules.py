"""Every rule a template declares can fail on its own, and the verdict names it.

The cases are built from the rules themselves: the template's committed baseline result (which
passes them all) with one rule's metric moved just past that rule's threshold, and onto it. So
they follow the template when rules are added or their paths change. What they cannot see is a
rule deleted from template.json; the temporal_sae failure modes below pin those down.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from orchestrator.templates import Rule, TemplateSpec, load_template
from orchestrator.trust.validate import get_path, validate_result
from tests.orchestrator.helpers import REPO, TEMPLATES

SPECS = [load_template(REPO / "templates/temporal_sae"), load_template(TEMPLATES / "tiny")]
MISSING = object()  # set_path's value that deletes the path


def baseline(spec: TemplateSpec) -> dict:
    """The committed baseline's results: what it reported, with what the referee measured
    laid over it (as orchestrator.trust.validate merges them)."""
    run_dir = spec.root / spec.baseline_run
    result = json.loads((run_dir / spec.result_file).read_text())
    if spec.referee:
        result |= json.loads((run_dir / spec.referee.result_file).read_text())
    return result


def set_path(result: dict, dotted: str, value: Any) -> dict:
    """A copy of `result` with the dotted path set to `value` (or deleted: MISSING)."""
    changed = copy.deepcopy(result)
    *parents, leaf = dotted.split(".")
    node = changed
    for part in parents:
        node = node[part]
    if value is MISSING:
        del node[leaf]
    else:
        node[leaf] = value
    return changed


def edge(rule: Rule, current: Any, violate: bool) -> Any:
    """A value just past the rule's threshold (violate) or on its passing edge."""
    if rule.op in ("finite", "exists"):
        return ({"finite": math.nan, "exists": MISSING}[rule.op]) if violate else current
    if isinstance(rule.value, str):
        other = rule.value + " (changed)"
        return (other if rule.op == "==" else rule.value) if violate else current
    step = 1 if isinstance(current, int) and not isinstance(current, bool) else 1e-6
    below, at, above = rule.value - step, rule.value, rule.value + step
    violating = {">": at, ">=": below, "<": at, "<=": above, "==": above, "!=": at}
    passing = {">": above, ">=": at, "<": below, "<=": at, "==": at, "!=": above}
    return (violating if violate else passing)[rule.op]


RULES = [
    pytest.param(spec, rule, id=f"{spec.name}: {rule.describe()}")
    for spec in SPECS
    for rule in spec.rules
]


def naming(problems: list[str], rule: Rule) -> list[str]:
    return [p for p in problems if f"violates '{rule.describe()}'" in p]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_the_committed_baseline_passes_every_rule(spec):
    verdict = validate_result(baseline(spec), spec)
    assert verdict.ok, verdict.summary()


@pytest.mark.parametrize(("spec", "rule"), RULES)
def test_each_rule_fails_alone_and_is_named(spec, rule):
    result = baseline(spec)
    current = get_path(result, rule.metric)
    verdict = validate_result(set_path(result, rule.metric, edge(rule, current, True)), spec)
    assert not verdict.ok
    assert len(naming(verdict.problems, rule)) == 1, verdict.summary()
    # nothing else broke: only rules (or the schema entry) on the same metric may object too
    assert all(p.startswith((f"{rule.metric} ", f"{rule.metric}:")) for p in verdict.problems)


@pytest.mark.parametrize(("spec", "rule"), RULES)
def test_each_rule_passes_on_its_edge(spec, rule):
    result = baseline(spec)
    value = edge(rule, get_path(result, rule.metric), False)
    verdict = validate_result(set_path(result, rule.metric, value), spec)
    assert naming(verdict.problems, rule) == [], verdict.summary()


# What a broken SAE run looks like, by the last part of the metric's path; each must be invalid.
FAILURE_MODES = [
    ("final_loss", math.inf, "training diverged"),
    ("variance_ratio", 1.18, "latents left near their random init (issue 19's lying run)"),
    ("explained_variance", -0.2, "worse than the mean activation"),
    ("explained_variance", 0.3, "misses most of the residual stream"),
    ("l0", 0.0, "no latent fires"),
    ("l0", 600.0, "not a sparse code"),
    ("frac_dead_latents", 0.6, "most latents dead"),
    ("causal", 0.0, "reads future tokens"),
    ("ce_loss_score", -0.1, "splicing hurts as much as zero-ablation"),
    ("sae_test_accuracy", 0.5, "probes at chance"),
    ("unlearning_score", math.nan, "no unlearning score"),
    ("consistency_short", math.nan, "no temporal score"),
    ("stateless", 0.0, "an SAE that carries state between calls"),
    ("batch_independent", 0.0, "a sequence's code depends on the rest of the batch"),
    ("decodes_any_code", 0.0, "decode fails on a code encode did not produce"),
]


@pytest.mark.parametrize(("leaf", "value", "why"), FAILURE_MODES, ids=[m[2] for m in FAILURE_MODES])
def test_broken_sae_runs_fail_the_temporal_sae_rules(leaf, value, why):
    spec = SPECS[0]
    (path,) = {r.metric for r in spec.rules if r.metric.split(".")[-1] == leaf}
    verdict = validate_result(set_path(baseline(spec), path, value), spec)
    assert any(p.startswith(f"{path} = ") for p in verdict.problems), f"{why}: passed"


def test_no_reported_number_decides_temporal_sae_validity():
    """Issue 19: the experiment writes final_info.json, so a rule on one of its numbers can be
    passed by writing that number. Every temporal_sae rule reads what the referee measured,
    except final_loss's, which only names a diverged run that the measured rules (EV, L0, the
    learning ratio) refuse anyway."""
    spec = SPECS[0]
    measured = json.loads((spec.root / spec.baseline_run / spec.referee.result_file).read_text())
    reported = {r.metric for r in spec.rules if r.metric.split(".")[0] not in measured}
    assert reported == {"final_loss"}
    assert "referee.learning.variance_ratio" in {r.metric for r in spec.rules}
