"""The referee's variance_ratio, from the artifact alone, tells a run that learned from one whose
latents sit at their random init, whatever it reports: the lying run (100 steps at lr 2e-4,
claiming 610 steps and cosine 0.61) lands under saelab.learning.LEARNED_RATIO, an SAE that
trained above it, and temporal_sae's template rule, which reads that measured number, refuses
the lie. Real tiny-budget experiments on Gemma 3 270M's tiny cached slice.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from orchestrator.templates import load_template
from orchestrator.trust.validate import validate_result
from saelab.activations import held_out_split
from saelab.artifact import load_artifact
from saelab.learning import LEARNED_RATIO, decoder_directions, learning
from saelab.models import load_model
from saelab.profiles import profile
from saelab.referee import measure

TINY = profile("tiny")
TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "temporal_sae"
RATIO = "referee.learning.variance_ratio"


@pytest.fixture(scope="module")
def held_out() -> torch.Tensor:
    settings = (TINY.layer, TINY.corpus, TINY.seq_len, TINY.cache_tokens, TINY.test_fraction)
    return held_out_split(load_model(TINY.model_name), *settings).acts.float()


def run(ex, out_dir: Path, *flags: str) -> Path:
    # fp32: bf16 autocast is emulated, ~20x slower, on CPUs without AVX-512 (AMD EPYC here)
    ex.main([f"--out_dir={out_dir}", "--budget=tiny", "--bf16=false", *flags])
    return out_dir


@pytest.fixture(scope="module")
def lying(ex, tmp_path_factory) -> Path:
    """~100 steps at lr 2e-4: the latents stay at their random init."""
    return run(ex, tmp_path_factory.mktemp("lying") / "run_1", "--learning_rate=2e-4")


@pytest.fixture(scope="module")
def trained(ex, tmp_path_factory) -> Path:
    return run(
        ex,
        tmp_path_factory.mktemp("trained") / "run_1",
        "--learning_rate=3e-3",
        "--train_tokens=153600",
    )


def test_decoder_directions_are_read_off_decode_alone(ex, tmp_path):
    """Without the weights: decode(one-hot) - decode(0) gives each unit decoder row back."""
    cfg = ex.parse_args([f"--out_dir={tmp_path}", "--budget=tiny"])
    torch.manual_seed(0)
    sae = ex.build_sae(cfg, 64, torch.zeros(64)).eval()
    example = torch.randn(2, 4, 64)
    ex.save_sae(sae, 0.5, cfg, tmp_path, example)
    rows = decoder_directions(load_artifact(tmp_path))
    torch.testing.assert_close(rows, sae.W_dec.detach(), atol=1e-5, rtol=1e-5)


def test_a_lying_run_is_flagged_by_the_measured_number(lying):
    """The issue's case: barely trained; what it reports does not enter the measurement."""
    ratio = measure(lying, TINY, evals=())["referee"]["learning"]["variance_ratio"]
    assert ratio < LEARNED_RATIO, ratio


def test_the_template_rule_refuses_the_lie_whatever_it_reports(lying):
    """The lying run writes the facts of a trained one; the verdict reads the lab's number."""
    spec = load_template(TEMPLATE)
    (rule,) = [r for r in spec.rules if r.metric == RATIO]
    assert rule.value == LEARNED_RATIO
    claims = {"training_steps": 610, "tokens_seen": 2_498_560, "decoder_init_cosine": 0.61}
    reported = json.loads((lying / "final_info.json").read_text()) | claims
    learning_only = dataclasses.replace(spec, rules=[rule], schema={})
    verdict = validate_result(reported, learning_only, measure(lying, TINY, evals=()))
    assert not verdict.ok
    assert verdict.problems[0].startswith(f"{RATIO} = "), verdict.problems


def test_a_trained_sae_passes_the_learning_threshold(trained, held_out):
    ratio = learning(load_artifact(trained), held_out)["variance_ratio"]
    assert ratio >= LEARNED_RATIO, ratio
