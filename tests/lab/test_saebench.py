"""The lab's core metrics against the real SAEBench (sae-bench 0.6.0, with SAELens 6.54.12 and
its ExplainedVarianceCalculator), on the same tokens, the same model weights and the same SAE:
L0, dead fraction, cosine, EV, CE-loss and KL scores agree under aligned conventions (named in
tests/lab/saebench_check.py and docs/interfaces.md). sae-bench runs in .venvs/saebench, built
on first use like .venvs/saelens (tests/lab/saebench_env.py)."""

from __future__ import annotations

import pytest
import torch
from saebench_env import run_saebench
from safetensors.torch import save_file
from test_saelens import TINY, untied

from saelab.activations import harvest
from saelab.evals import EvalConfig
from saelab.evals.common import residuals_batched
from saelab.evals.core import density_metrics, downstream_metrics, reconstruction_metrics
from saelab.models import offline_model_dir
from saelab.saelens import write_saelens

N_SEQ = 4  # sequences of TINY.seq_len tokens after the BOS


@pytest.fixture(scope="module")
def both(ex, lm, tmp_path_factory) -> tuple[dict, dict]:
    """(saelab's numbers, sae-bench's) for one untrained-but-untied TopK SAE."""
    train, test = harvest(lm, TINY.layer, TINY.corpus, TINY.seq_len, TINY.cache_tokens).split(
        TINY.test_fraction
    )
    sae = untied(ex, "topk", next(train.sequence_batches(64, normalize=False)))
    tokens = test.tokens[:N_SEQ].long()
    ids = torch.cat([torch.full_like(tokens[:, :1], lm.bos_token_id), tokens], 1)
    # residuals in the model's dtype, as sae-bench's adapter sees them (the cache keeps bf16)
    acts = residuals_batched(lm, ids, torch.ones_like(ids), TINY.layer, N_SEQ)[:, 1:]
    config = EvalConfig().tiny()
    with torch.no_grad():
        recon = reconstruction_metrics(sae, acts, config)
        density = density_metrics(sae, acts, config)
        downstream = downstream_metrics(sae, lm, TINY.layer, tokens, config)
    ours = {
        **recon["reconstruction_quality"],
        **recon["sparsity"],
        **density["misc"],
        **downstream["model_performance_preservation"],
        **downstream["model_behavior_preservation"],
    }
    work = tmp_path_factory.mktemp("saebench")
    save_file({"tokens": ids.contiguous()}, work / "tokens.safetensors")
    written = write_saelens(
        work / "sae", "topk", sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, k=sae.k,
        threshold=None, model_name=TINY.model_name, layer=TINY.layer, seq_len=TINY.seq_len,
    )  # fmt: skip
    assert written
    dtype = str(lm.dtype).removeprefix("torch.")
    theirs = run_saebench(
        work, [str(offline_model_dir()), str(work / "sae"), str(TINY.layer), dtype]
    )
    return ours, theirs


def test_sparsity_and_reconstruction_match_saebench(both):
    ours, theirs = both
    assert ours["l0"] == pytest.approx(theirs["l0"], rel=1e-6)
    assert ours["frac_dead_latents"] == theirs["frac_dead_latents"]
    assert 0 < ours["frac_dead_latents"] < 1  # a count that can disagree
    assert ours["cossim"] == pytest.approx(theirs["cossim"], abs=1e-5)
    # EV against SAELens's calculator; sae-bench 0.6.0's own formula is off (a known bug)
    assert ours["explained_variance"] == pytest.approx(
        theirs["explained_variance_saelens"], abs=1e-5
    )
    assert abs(theirs["explained_variance_saebench"] - ours["explained_variance"]) > 1e-3


def test_ce_and_kl_match_saebench(both):
    ours, theirs = both
    for key in ("ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key
    for key in ("kl_div_with_sae", "kl_div_with_ablation"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4), key
    assert ours["ce_loss_score"] == pytest.approx(theirs["ce_loss_score"], abs=1e-5)
    assert ours["kl_div_score"] == pytest.approx(theirs["kl_div_score"], abs=1e-5)
