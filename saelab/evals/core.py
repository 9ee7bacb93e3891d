"""Core eval: reconstruction, sparsity, and what splicing the SAE in does to the model.

Metrics (eval_result_metrics):
    reconstruction_quality: explained_variance (1 - E||x - x_hat||^2 / E||x - mean||^2),
        mse (per element), cossim (mean per token)
    sparsity: l0, l1 (per token)
    model_performance_preservation: ce_loss_score ((CE_zero - CE_sae) / (CE_zero - CE_clean)),
        ce_loss_with_ablation, ce_loss_with_sae, ce_loss_without_sae
    model_behavior_preservation: kl_div_score (1 - KL_sae / KL_zero), kl_div_with_ablation,
        kl_div_with_sae
    misc: frac_dead_latents, frac_dense_latents (firing on > dense_threshold of tokens),
        causal (1.0 when check_causal found no future-token leakage, else 0.0)
Zero ablation replaces the residual after `layer` by zeros at every position but BOS.
The clean and zero-ablated losses are stored in the shared eval cache; the clean logits the KL
needs ([T, vocab] per sequence, ~1 GB in fp32 at the defaults) are not, so each SAE runs the
upper layers twice: clean and spliced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.activations import ActivationCache
from saelab.evals.common import (
    EvalConfig,
    SAELike,
    decode,
    encode,
    input_fields,
    make_block,
    residuals_batched,
    splice,
    stored,
)
from saelab.evals.temporal import check_causal
from saelab.models import LanguageModel


def run_core(
    sae: SAELike, model: LanguageModel, layer: int, cache: ActivationCache, config: EvalConfig
) -> dict:
    """SAEBench core block for `sae` on held-out sequences of `cache` (raw residuals)."""
    recon = reconstruction_metrics(sae, cache.acts[: config.core_recon_seqs], config)
    downstream = downstream_metrics(sae, model, layer, cache.tokens[: config.core_ce_seqs], config)
    causal = check_causal(sae, cache.acts[:2].float())
    metrics = {
        "reconstruction_quality": recon["reconstruction_quality"],
        "sparsity": recon["sparsity"],
        "model_performance_preservation": downstream["model_performance_preservation"],
        "model_behavior_preservation": downstream["model_behavior_preservation"],
        "misc": {**recon["misc"], "causal": float(causal["causal"])},
    }
    details = {"causality": causal, "n_recon_tokens": recon["n_tokens"]}
    return make_block("core", sae, config, metrics, details)


@torch.no_grad()
def reconstruction_metrics(sae: SAELike, acts: Tensor, config: EvalConfig) -> dict:
    n_tok, sq_err, sum_x, sum_x2, cos, l0, l1 = 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    fires = torch.zeros(sae.d_sae, dtype=torch.float64)
    for i in range(0, acts.shape[0], config.batch_size):
        x = acts[i : i + config.batch_size].float()
        f = encode(sae, x)
        x_hat = decode(sae, f)
        x, x_hat, f = x.flatten(0, 1), x_hat.flatten(0, 1).float(), f.flatten(0, 1).float()
        n_tok += x.shape[0]
        sq_err += (x - x_hat).double().pow(2).sum().item()
        sum_x = sum_x + x.double().sum(0)
        sum_x2 += x.double().pow(2).sum().item()
        cos += F.cosine_similarity(x, x_hat, dim=-1, eps=1e-8).double().sum().item()
        active = f != 0
        l0 += active.sum().item()
        l1 += f.abs().double().sum().item()
        fires += active.double().sum(0)
    total_var = sum_x2 - (sum_x.pow(2).sum().item() / n_tok)  # sum ||x - mean||^2
    freq = fires / n_tok
    return {
        "n_tokens": n_tok,
        "reconstruction_quality": {
            "explained_variance": 1.0 - sq_err / total_var,
            "mse": sq_err / (n_tok * acts.shape[-1]),
            "cossim": cos / n_tok,
        },
        "sparsity": {"l0": l0 / n_tok, "l1": l1 / n_tok},
        "misc": {
            "frac_dead_latents": (freq == 0).double().mean().item(),
            "frac_dense_latents": (freq > config.dense_threshold).double().mean().item(),
        },
    }


@torch.no_grad()
def downstream_metrics(
    sae: SAELike, model: LanguageModel, layer: int, tokens: Tensor, config: EvalConfig
) -> dict:
    ids = torch.cat([torch.full_like(tokens[:, :1], model.bos_token_id), tokens], 1).long()
    mask = torch.ones_like(ids)
    resid = residuals_batched(model, ids, mask, layer, config.batch_size)
    base = stored(
        "core_clean",
        input_fields(model, layer, ids, mask),
        lambda: _clean_and_ablation(model, layer, ids, resid, config.batch_size),
    )
    ce_sae, kl_sae = 0.0, 0.0
    for i in range(0, ids.shape[0], config.batch_size):
        rows = slice(i, i + config.batch_size)
        clean = _logprobs(model.logits_from(resid[rows], layer, mask[rows]))
        spliced = _logprobs(model.logits_from(splice(sae, resid[rows]), layer, mask[rows]))
        ce_sae += _ce_sum(spliced, ids[rows])
        kl_sae += _kl_sum(clean, spliced)
    n_pred = ids.shape[0] * (ids.shape[1] - 1)
    ce_sae, kl_sae = ce_sae / n_pred, kl_sae / n_pred
    ce_clean, ce_zero, kl_zero = (base[k].item() for k in ("ce_clean", "ce_zero", "kl_zero"))
    return {
        "model_performance_preservation": {
            "ce_loss_score": (ce_zero - ce_sae) / (ce_zero - ce_clean),
            "ce_loss_with_ablation": ce_zero,
            "ce_loss_with_sae": ce_sae,
            "ce_loss_without_sae": ce_clean,
        },
        "model_behavior_preservation": {
            "kl_div_score": 1.0 - kl_sae / kl_zero,
            "kl_div_with_ablation": kl_zero,
            "kl_div_with_sae": kl_sae,
        },
    }


def _clean_and_ablation(
    model: LanguageModel, layer: int, ids: Tensor, resid: Tensor, batch_size: int
) -> dict[str, Tensor]:
    mask = torch.ones_like(ids)
    ce_clean, ce_zero, kl_zero = 0.0, 0.0, 0.0
    for i in range(0, ids.shape[0], batch_size):
        rows = slice(i, i + batch_size)
        clean = _logprobs(model.logits_from(resid[rows], layer, mask[rows]))
        zeroed = resid[rows].clone()
        zeroed[:, 1:] = 0
        ablated = _logprobs(model.logits_from(zeroed, layer, mask[rows]))
        ce_clean += _ce_sum(clean, ids[rows])
        ce_zero += _ce_sum(ablated, ids[rows])
        kl_zero += _kl_sum(clean, ablated)
    n_pred = ids.shape[0] * (ids.shape[1] - 1)
    sums = {"ce_clean": ce_clean, "ce_zero": ce_zero, "kl_zero": kl_zero}
    return {k: torch.tensor(v / n_pred, dtype=torch.float64) for k, v in sums.items()}


def _logprobs(logits: Tensor) -> Tensor:
    return logits[:, :-1].float().log_softmax(-1)  # position t predicts token t + 1


def _ce_sum(logprobs: Tensor, ids: Tensor) -> float:
    return -logprobs.gather(-1, ids[:, 1:, None].to(logprobs.device)).sum().item()


def _kl_sum(clean: Tensor, other: Tensor) -> float:
    return F.kl_div(other, clean, log_target=True, reduction="sum").item()
