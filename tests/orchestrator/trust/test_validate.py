"""templates.py (template.json parsing) and validate.py (the validation gate)."""

import json
import math
import sys

import pytest

from orchestrator.envs import SetupError
from orchestrator.templates import TemplateError, load_template, resolve_python
from orchestrator.trust.validate import get_path, validate_result, validate_run
from tests.orchestrator.helpers import (
    TEMPLATES,
    core_result,
    core_spec,
    core_template_json,
    core_write_run,
)


@pytest.fixture
def spec(tmp_path):
    return core_spec(tmp_path / "template")


def test_a_sound_result_is_valid_and_reports_key_metrics(spec):
    verdict = validate_result(core_result(), spec)
    assert verdict.ok, verdict.summary()
    assert verdict.problems == []
    assert verdict.metrics == {"steps": 120, "loss": 0.012345678901, "score": 0.8731}
    assert verdict.summary().startswith("VALID")


def test_zero_training_steps_is_rejected_with_path_value_rule_and_message(spec):
    verdict = validate_result(core_result(training_steps=0), spec)
    assert not verdict.ok
    assert verdict.problems == ["training_steps = 0 violates 'training_steps > 0': no step ran"]
    assert "INVALID: 1 problem(s)" in verdict.summary()
    assert "no step ran" in verdict.summary()


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_is_rejected(spec, loss):
    verdict = validate_result(core_result(final_loss=loss), spec)
    assert not verdict.ok
    assert len(verdict.problems) == 1
    assert verdict.problems[0].startswith(f"final_loss = {loss!r} violates 'final_loss finite'")


def test_nan_fails_every_comparison(tmp_path):
    rules = [{"metric": "eval.score", "op": op, "value": 0.5} for op in ("<", ">=", "!=")]
    spec = core_spec(tmp_path, rules=rules)
    verdict = validate_result(core_result(eval={"score": math.nan}), spec)
    assert len(verdict.problems) == 3


def test_missing_path_is_reported_by_schema_and_rule(spec):
    verdict = validate_result(core_result(eval={}), spec)
    assert not verdict.ok
    assert "eval.score: missing (schema requires number)" in verdict.problems
    assert any(p.startswith("eval.score = missing violates") for p in verdict.problems)
    assert verdict.metrics["score"] is None


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("training_steps", True, "training_steps: expected int, got bool True"),
        ("training_steps", 12.5, "training_steps: expected int, got float 12.5"),
        ("final_loss", "0.1", "final_loss: expected number, got str '0.1'"),
        ("final_loss", None, "final_loss: expected number, got NoneType None"),
    ],
)
def test_wrong_types_are_rejected(spec, field, value, expected):
    verdict = validate_result(core_result(**{field: value}), spec)
    assert not verdict.ok
    assert expected in verdict.problems


def test_integral_float_counts_as_int_and_union_types_work(tmp_path):
    spec = core_spec(tmp_path, schema={"training_steps": "int", "final_loss": "number|null"})
    assert validate_result(core_result(training_steps=120.0, final_loss=None), spec).problems == [
        "final_loss = None violates 'final_loss finite': the loss diverged"
    ]


def test_equality_exists_and_string_rules(tmp_path):
    rules = [
        {"metric": "arch", "op": "==", "value": "topk"},
        {"metric": "seed", "op": "exists"},
        {"metric": "training_steps", "op": "<=", "value": 100, "message": "budget"},
    ]
    spec = core_spec(tmp_path, rules=rules)
    good = validate_result(core_result(arch="topk", seed=1, training_steps=100), spec)
    assert good.ok, good.summary()
    bad = validate_result(core_result(arch="relu", training_steps=101), spec)
    assert bad.problems == [
        "arch = 'relu' violates 'arch == 'topk''",
        "seed = missing violates 'seed exists'",
        "training_steps = 101 violates 'training_steps <= 100': budget",
    ]


def test_validate_run_handles_missing_and_corrupt_files(spec, tmp_path):
    missing = validate_run(core_write_run(tmp_path, "run_1", None), spec)
    assert not missing.ok and missing.problems[0].startswith("run_1/final_info.json: missing;")
    assert missing.metrics == {"steps": None, "loss": None, "score": None}
    (tmp_path / "run_1" / "final_info.json").write_text('{"training_steps": 3,')
    corrupt = validate_run(tmp_path / "run_1", spec)
    assert not corrupt.ok and "run_1/final_info.json: not valid JSON" in corrupt.problems[0]
    (tmp_path / "run_1" / "final_info.json").write_text("[1, 2]")
    assert "must hold a JSON object" in validate_run(tmp_path / "run_1", spec).problems[0]


def test_validate_run_reads_nan_written_by_json_dumps(spec, tmp_path):
    run_dir = core_write_run(tmp_path, "run_2", core_result(final_loss=math.nan))
    assert "NaN" in (run_dir / "final_info.json").read_text()
    verdict = validate_run(run_dir, spec)
    assert not verdict.ok and verdict.problems[0].startswith("final_loss = nan")


def test_get_path_walks_dotted_paths_and_names_the_missing_one():
    data = {"a": {"b": {"c": 3}}, "x": 1}
    assert get_path(data, "a.b.c") == 3
    with pytest.raises(KeyError, match="a.b.z"):
        get_path(data, "a.b.z")
    with pytest.raises(KeyError, match="x.y"):
        get_path(data, "x.y")


def test_load_template_reads_every_field(spec, tmp_path):
    assert spec.name == "toy"
    assert spec.root == (tmp_path / "template").resolve()
    assert spec.python == "current" and spec.timeout_seconds == 30.0
    assert spec.plot_command is None and spec.curves_file == "loss_curve.json"
    assert [r.describe() for r in spec.rules] == [
        "training_steps > 0",
        "final_loss finite",
        "eval.score > 0.5",
    ]
    assert spec.resources == {"num_cpus": 1.0, "num_gpus": 0.0} and spec.objective is None
    tiny = load_template(TEMPLATES / "tiny")
    assert tiny.objective == ("loss", "min") and tiny.resources["num_cpus"] == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rules": [{"metric": "a", "op": "=>", "value": 1}]}, r"'rules\[0\].op' is '=>'"),
        ({"rules": [{"metric": "a", "op": ">"}]}, r"'rules\[0\].value' is needed"),
        ({"rules": [{"metric": "a", "op": ">", "value": "1"}]}, "must be a number"),
        ({"schema": {"a": "float"}}, "'schema.a' has type 'float'"),
        ({"python": "conda"}, "'python' must be one of lab, current"),
        ({"run_command": ["python", "experiment.py"]}, "must contain '{out_dir}'"),
        ({"timeout_seconds": "30"}, "'timeout_seconds' must be of type int or float"),
        ({"editable_files": []}, "'editable_files' must be a non-empty list"),
        ({"resources": {"gpus": 1}}, "'resources.gpus' is unknown; use num_cpus or num_gpus"),
        ({"resources": {"num_gpus": 0.5}}, "'resources.num_gpus' must be a whole number"),
        ({"resources": {"num_cpus": 0}}, "'resources.num_cpus' must be more than 0"),
        ({"resources": {"num_cpus": "2"}}, "'resources.num_cpus' must be a number 0 or more"),
        ({"objective": {"metric": "score", "goal": "up"}}, "'objective' must be"),
        ({"objective": {"metric": "EV", "goal": "max"}}, "'objective.metric' must name a key"),
    ],
)
def test_bad_template_fields_give_one_line_naming_the_field(tmp_path, overrides, message):
    (tmp_path / "template.json").write_text(json.dumps(core_template_json(**overrides)))
    with pytest.raises(TemplateError, match=message) as err:
        load_template(tmp_path)
    assert "\n" not in str(err.value) and "template.json" in str(err.value)


def test_missing_field_and_missing_file(tmp_path):
    raw = core_template_json()
    del raw["rules"]
    (tmp_path / "template.json").write_text(json.dumps(raw))
    with pytest.raises(TemplateError, match="field 'rules' is missing"):
        load_template(tmp_path)
    with pytest.raises(TemplateError, match="not found"):
        load_template(tmp_path / "nowhere")


def test_resolve_python(tmp_path, monkeypatch):
    assert resolve_python(core_spec(tmp_path / "a")) == sys.executable
    lab = core_spec(tmp_path / "b", python="lab")
    monkeypatch.setenv("SCIENTIST_LAB_PYTHON", sys.executable)
    assert resolve_python(lab) == sys.executable
    monkeypatch.setenv("SCIENTIST_LAB_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(SetupError, match="python3 -m orchestrator.envs"):
        resolve_python(lab)
