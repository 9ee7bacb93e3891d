"""saelab.saelens: each architecture SAELens also has is written so that the real sae-lens
6.54.12 loads it and gives the template's latents and reconstructions on real residuals; an
architecture it does not have is never written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from saelens_env import run_saelens

from saelab.activations import harvest
from saelab.profiles import profile
from saelab.saelens import write_saelens

# our architecture -> the class SAELens must load it as
SAELENS_CLASSES = {"topk": "TopKSAE", "batchtopk": "JumpReLUSAE", "relu": "StandardSAE"}
TINY = profile("tiny")


def untied(ex, architecture: str, train_x: torch.Tensor):
    """A template SAE whose weights would expose a swapped or dropped tensor: an untrained one
    has W_enc = W_dec.T and b_enc = 0, so noise unties them."""
    cfg = ex.Config(out_dir="unused", architecture=architecture)
    torch.manual_seed(0)  # the same decoder for every architecture
    sae = ex.build_sae(cfg, train_x.shape[-1], train_x.flatten(0, 1).mean(0))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        pre_std = sae.pre_acts(train_x).std()
        sae.W_enc.add_(0.1 * torch.randn(sae.W_enc.shape, generator=gen) * sae.W_enc.std())
        sae.b_enc.copy_(0.5 * pre_std * torch.randn(sae.d_sae, generator=gen))
        if architecture == "batchtopk":
            sae.train()  # one BatchTopK batch sets the threshold, as training does
            sae.encode(train_x)
    return sae.eval()


@pytest.fixture(scope="module")
def compared(ex, lm, tmp_path_factory) -> dict[str, dict]:
    """{architecture: ours (latents, recon, sae) and SAELens's (latents, recon, class)}."""
    train, test = harvest(lm, TINY.layer, TINY.corpus, TINY.seq_len, TINY.cache_tokens).split(
        TINY.test_fraction
    )
    train_x = next(train.sequence_batches(64, normalize=False))  # raw residuals (B, L, D)
    x = next(test.sequence_batches(64, normalize=False))
    work = tmp_path_factory.mktemp("saelens")
    ours = {}
    for architecture in SAELENS_CLASSES:
        sae = untied(ex, architecture, train_x)
        with torch.no_grad():
            latents = sae.encode(x)
            ours[architecture] = {"latents": latents, "recon": sae.decode(latents), "sae": sae}
        written = write_saelens(
            work / architecture,
            architecture,
            sae.W_enc,
            sae.b_enc,
            sae.W_dec,
            sae.b_dec,
            k=sae.k if architecture != "relu" else None,
            threshold=getattr(sae, "threshold", None),
            model_name=TINY.model_name,
            layer=TINY.layer,
            seq_len=TINY.seq_len,
        )
        assert written
    theirs = run_saelens(work, x, [work / name for name in SAELENS_CLASSES])
    return {name: {"ours": ours[name], "theirs": theirs[name]} for name in SAELENS_CLASSES}


@pytest.mark.parametrize("architecture", list(SAELENS_CLASSES))
def test_saelens_loads_our_layout_and_matches(architecture, compared):
    ours, theirs = compared[architecture]["ours"], compared[architecture]["theirs"]
    assert theirs["class"] == SAELENS_CLASSES[architecture]
    assert theirs["hook_name"] == f"blocks.{TINY.layer}.hook_resid_post"
    # the same latents fire, with the same values, and the same reconstruction: float32 sums
    # in another order (our sparse decode, SAELens's dense one) on residuals whose outlier
    # dimensions reach thousands, so the tolerance scales with the largest value
    # (a ReLU latent whose pre-activation is within that rounding of 0 may fire in one only)
    tiny = 1e-5 * ours["latents"].abs().max().item()
    differ = (theirs["latents"] != 0) != (ours["latents"] != 0)
    assert differ.float().mean() < 1e-4
    assert (ours["latents"][differ].abs() <= tiny).all()
    assert (theirs["latents"][differ].abs() <= tiny).all()
    for name in ("latents", "recon"):
        atol = 1e-5 * ours[name].abs().max().item()  # our encoder folds b_dec into its bias
        torch.testing.assert_close(theirs[name], ours[name], rtol=1e-5, atol=atol)
    # a comparison that can fail: sparse where the architecture is, ReLU cut by its threshold
    l0 = (ours["latents"] != 0).sum(-1).float().mean().item()
    assert 0 < l0 < ours["sae"].d_sae / 2 or architecture == "relu", l0


def test_batchtopk_threshold_cuts_latents_relu_would_keep(compared):
    """Otherwise the batchtopk comparison would pass with the threshold ignored (same weights
    as the relu SAE, so relu's L0 is batchtopk's without the threshold)."""
    sae = compared["batchtopk"]["ours"]["sae"]
    assert sae.threshold > 0
    relu_l0 = (compared["relu"]["ours"]["latents"] != 0).sum(-1).float().mean()
    batchtopk_l0 = (compared["batchtopk"]["ours"]["latents"] != 0).sum(-1).float().mean()
    assert batchtopk_l0 < relu_l0 / 2, (batchtopk_l0, relu_l0)


def test_an_architecture_without_a_saelens_twin_is_not_written(tmp_path: Path):
    d, f = 8, 32
    weights = torch.zeros(d, f), torch.zeros(f), torch.zeros(f, d), torch.zeros(d)
    written = write_saelens(
        tmp_path / "sae", "temporal_conv", *weights, k=4, threshold=None,
        model_name="m", layer=0, seq_len=16,
    )  # fmt: skip
    assert written is False and not (tmp_path / "sae").exists()


def test_mismatched_weights_fail_with_one_clear_line(tmp_path: Path):
    d, f = 8, 32
    with pytest.raises(ValueError, match=r"W_dec \(8, 32\).*pass W_enc \[D, F\]"):
        write_saelens(
            tmp_path, "relu", torch.zeros(d, f), torch.zeros(f), torch.zeros(d, f),
            torch.zeros(d), k=None, threshold=None, model_name="m", layer=0, seq_len=16,
        )  # fmt: skip
