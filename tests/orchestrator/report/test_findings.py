"""The decision rule (report/findings.py), the Hypotheses schema, the best run, the prose flags."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest

from orchestrator.ideas import Hypothesis, IdeaError, check_hypotheses, load_idea
from orchestrator.report import findings
from orchestrator.report.findings import (
    CONTRADICTED,
    NOISE,
    SUPPORTED,
    UNMEASURED,
    Arm,
    Effect,
    decide,
)
from orchestrator.templates import RefereeSpec, TemplateSpec
from tests.orchestrator.helpers import core_spec

UP = Hypothesis("score", "up", "w")
DOWN = Hypothesis("score", "down", "w")
NOT_LOWER = Hypothesis("score", "not_worse", "w", margin=-0.005)  # higher is better
NOT_HIGHER = Hypothesis("score", "not_worse", "w", margin=0.02)  # lower is better


def effect(run: list[float], base: list[float], ci: tuple[float, float] | None = None) -> Effect:
    return Effect("score", Arm.of(base), Arm.of(run), ci)


def test_pooled_spread_of_both_arms_sets_the_interval():
    e = effect([1.0, 1.2, 1.4], [0.0, 0.1, 0.2])  # sample SDs 0.2 and 0.1, 2 dof each
    assert e.difference == pytest.approx(1.1)
    assert e.half_width == pytest.approx(2 * math.sqrt((2 * 0.04 + 2 * 0.01) / 4))
    assert e.interval == pytest.approx((1.1 - e.half_width, 1.1 + e.half_width))


def test_one_seed_against_a_band_uses_the_band_alone():
    e = Effect("score", Arm(0.5, 0.1, 3), Arm.of([0.9]))
    assert e.half_width == pytest.approx(2 * 0.1)  # the run's single seed adds no dof


@pytest.mark.parametrize(
    ("run", "hypothesis", "expected"),
    [
        ([0.9, 0.91, 0.92], UP, SUPPORTED),
        ([0.9, 0.91, 0.92], DOWN, CONTRADICTED),
        ([0.1, 0.11, 0.12], UP, CONTRADICTED),
        ([0.1, 0.11, 0.12], DOWN, SUPPORTED),
        ([0.52, 0.49, 0.51], UP, NOISE),
        ([0.52, 0.49, 0.51], DOWN, NOISE),
    ],
)
def test_up_and_down(run, hypothesis, expected):
    assert decide(hypothesis, effect(run, [0.5, 0.51, 0.49])) == expected


@pytest.mark.parametrize(
    ("shift", "hypothesis", "expected"),
    [
        (0.0, NOT_LOWER, SUPPORTED),  # no change at all is not worse than -0.005
        (-0.0035, NOT_LOWER, NOISE),  # the interval (±0.002) straddles -0.005
        (-0.02, NOT_LOWER, CONTRADICTED),
        (0.0, NOT_HIGHER, SUPPORTED),
        (0.019, NOT_HIGHER, NOISE),
        (0.05, NOT_HIGHER, CONTRADICTED),
    ],
)
def test_not_worse_than_a_signed_margin(shift, hypothesis, expected):
    base = [0.5, 0.501, 0.499]  # SD 0.001: half width 0.002
    assert decide(hypothesis, effect([v + shift for v in base], base)) == expected


def test_the_paired_ci_widens_the_interval():
    run, base = [0.56, 0.561, 0.559], [0.5, 0.501, 0.499]
    assert decide(UP, effect(run, base)) == SUPPORTED
    assert decide(UP, effect(run, base, ci=(-0.01, 0.12))) == NOISE  # the items disagree
    assert decide(UP, effect(run, base, ci=(0.03, 0.09))) == SUPPORTED


def test_no_spread_anywhere_decides_nothing_and_no_measure_is_unmeasured():
    assert decide(UP, effect([0.9], [0.1])) == NOISE  # one seed each: no noise estimate
    assert decide(UP, effect([3.0, 3.0], [3.0, 3.0])) == NOISE  # no change, zero spread
    assert decide(UP, None) == UNMEASURED


def test_the_objective_stands_in_for_missing_hypotheses(tmp_path):
    spec = core_spec(tmp_path, objective={"metric": "loss", "goal": "min"})
    (h,) = findings.hypotheses_of([], spec)
    assert (h.metric, h.direction) == ("loss", "down")
    assert findings.hypotheses_of([UP], spec) == [UP]


def test_best_run_follows_the_first_hypothesis():
    valid = [
        {"run_name": "run_1", "metrics": {"score": 0.2}},
        {"run_name": "run_2", "metrics": {"score": 0.9}},
        {"run_name": "run_3", "metrics": {"score": 0.5}},
    ]
    assert findings.best_run(valid, [UP])["run_name"] == "run_2"
    assert findings.best_run(valid, [DOWN])["run_name"] == "run_1"
    assert findings.best_run(valid, [])["run_name"] == "run_3"
    assert findings.best_run([], [UP]) is None


def write_idea(tmp_path: Path, hypotheses) -> Path:
    raw = {"Name": "x", "Title": "t", "Experiment": "e", "Hypotheses": hypotheses}
    (tmp_path / "x.json").write_text(json.dumps(raw))
    return tmp_path


@pytest.mark.parametrize(
    ("hypotheses", "named"),
    [
        ({"metric": "score"}, "must be a list"),
        (["score up"], r"Hypotheses\[0\] must be an object"),
        ([{"metric": "score", "direction": "sideways", "why": "w"}], "'direction' is 'sideways'"),
        ([{"metric": "score", "direction": "up"}], "'why' must be a non-empty string"),
        ([{"metric": "score", "direction": "not_worse", "why": "w"}], "'margin'"),
        ([{"metric": "score", "direction": "up", "why": "w", "margin": 0.1}], "'margin'"),
    ],
)
def test_hypothesis_schema_errors_are_one_line(tmp_path, hypotheses, named):
    with pytest.raises(IdeaError, match=named) as error:
        load_idea("x", write_idea(tmp_path, hypotheses))
    assert "\n" not in str(error.value)


def test_a_hypothesis_must_name_a_key_metric(tmp_path):
    ideas = write_idea(tmp_path, [{"metric": "EV", "direction": "up", "why": "w"}])
    with pytest.raises(IdeaError, match=r"'EV' is not a key metric .*\(steps, loss, score\)"):
        check_hypotheses(load_idea("x", ideas), {"steps": "a", "loss": "b", "score": "c"})


def test_bundled_ideas_declare_hypotheses_on_key_metrics():
    from orchestrator.ideas import list_ideas
    from orchestrator.templates import load_template
    from tests.orchestrator.helpers import REPO

    spec = load_template(REPO / "templates" / "temporal_sae")
    for idea in list_ideas():
        check_hypotheses(idea, spec.key_metrics)
        assert idea.hypotheses, idea.name
    temporal = {h.describe() for h in load_idea("temporal_sae").hypotheses}
    assert temporal == {
        "unlearning score up",
        "consistency (short) up",
        "explained variance not worse than -0.005",
    }


MEASURED = {"explained variance": [0.9637, 0.9612], "dead fraction": [0.3139, 0.2]}


def test_a_number_no_measurement_gave_is_flagged():
    text = "Explained variance rose to 0.975. The dead fraction fell to 20%."
    flagged = findings.flag_numbers(text, MEASURED)
    assert "0.975. [NOT MEASURED SO: explained variance measured 0.9637, 0.9612]" in flagged
    assert flagged.endswith("fell to 20%.")  # 0.2 as a percentage: measured


def test_measured_values_and_differences_pass_unflagged():
    text = "Explained variance 0.9612 (-0.0025 vs the mean).\nDead fraction 0.314; run 2 of 3."
    assert findings.flag_numbers(text, MEASURED) == text


def test_summary_has_one_hypotheses_row_per_idea():
    from orchestrator.report import summary

    row = summary.IdeaSummary("a", "t", Path("ws"), "ended", findings=["score up: supported"])
    _, body = summary.rows([row, summary.IdeaSummary("b", "t", None, "not started")])
    assert ["hypotheses", "", "score up: supported", "none"] in body


def test_closing_table_has_a_finding_column():
    from rich.console import Console

    from orchestrator.journal import Usage
    from orchestrator.report.closing import runs_table
    from orchestrator.report.records import RunRecord

    runs = [
        RunRecord(name, "ok", True, [], {"score": value, "steps": 3}, "", False, None)
        for name, value in (("run_0", 0.5), ("run_1", 0.9))
    ]
    row = findings.Finding(UP, effect([0.9, 0.91, 0.92], [0.5, 0.51, 0.49]), SUPPORTED)
    found = findings.Findings("run_1", [1, 2], "confirmed", [row])
    console = Console(record=True, width=120)
    console.print(runs_table(runs, Usage(), 60.0, found=found))
    lines = console.export_text().splitlines()
    assert "finding (run_1)" in next(line for line in lines if "run_0" in line)
    assert next(line for line in lines if line.startswith("│ score")).split("│")[-2].strip() == (
        SUPPORTED
    )
    assert next(line for line in lines if line.startswith("│ steps")).split("│")[-2].strip() == ""


def test_paired_cis_need_every_items_file(tmp_path):
    spec = core_spec(tmp_path / "t")
    (tmp_path / "run_1").mkdir()
    (tmp_path / "run_1" / findings.ITEMS_FILE).write_text("{}")
    assert findings.paired_cis(tmp_path, spec, ["run_1"], ["run_0"]) == {}  # run_0 has none


def _refereed(directory: Path) -> TemplateSpec:
    """core_spec with a referee block: paired CIs read only items files a referee vouches for."""
    spec = core_spec(directory)
    return dataclasses.replace(spec, referee=RefereeSpec(command=["true"]))


def _write_items(run_dir: Path, items: dict) -> None:
    """An items file and the referee.json that records its sha256, as saelab.referee writes."""
    blob = json.dumps(items).encode()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / findings.ITEMS_FILE).write_bytes(blob)
    record = {"referee": {"items_sha256": hashlib.sha256(blob).hexdigest()}}
    (run_dir / "referee.json").write_text(json.dumps(record))


def test_paired_cis_come_from_the_labs_compare(tmp_path):
    import importlib.util

    import numpy as np

    if importlib.util.find_spec("saelab.compare") is None:
        pytest.skip("saelab.compare (the evals branch) is not installed here")
    spec = _refereed(tmp_path / "t")  # key metric "score" is eval.score, run by this python
    rng = np.random.default_rng(0)
    base = rng.normal(10, 3, size=300)
    for name, shift in (("run_0", 0.0), ("run_1", 0.5), ("run_1_seed1", 0.5)):
        values = (base + shift + rng.normal(0, 0.2, size=300)).tolist()
        entry = {"items": "set-1", "form": "ratio", "num": [values], "den": None}
        items = {"format": "saelab-items/1", "metrics": {"eval.score": entry}}
        _write_items(tmp_path / name, items)
    cis = findings.paired_cis(tmp_path, spec, ["run_1", "run_1_seed1"], ["run_0"])
    low, high = cis["score"]
    swapped = tmp_path / "run_1_seed1" / findings.ITEMS_FILE  # not the file its referee measured
    swapped.write_bytes((tmp_path / "run_1" / findings.ITEMS_FILE).read_bytes() + b" ")
    assert findings.paired_cis(tmp_path, spec, ["run_1", "run_1_seed1"], ["run_0"]) == {}
    assert 0.4 < low < 0.5 < high < 0.6  # the shift, found on paired items
    wide = effect([10.5, 10.51, 10.49], [10.0, 10.01, 9.99], ci=(low - 1, high))
    assert decide(UP, wide) == NOISE  # a CI that reaches below 0 keeps the verdict open
