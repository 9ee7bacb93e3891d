"""Core eval: reconstruction, sparsity, and what splicing the SAE in does to the model.

Metrics (eval_result_metrics):
    reconstruction_quality: explained_variance (1 - E||x - x_hat||^2 / E||x - mean||^2),
        mse (per element), cossim (mean per token)
    sparsity: l0, l1 (per token)
    model_performance_preservation: ce_loss_score ((CE_zero - CE_sae) / (CE_zero - CE_clean)),
        ce_loss_with_ablation, ce_loss_with_sae, ce_loss_without_sae
    model_behavior_preservation: kl_div_score (1 - KL_sae / KL_zero), kl_div_with_ablation,
        kl_div_with_sae
    misc: frac_dead_latents (never fires), frac_rare_latents (fires, on < rare_threshold = 1e-5
        of tokens), frac_dense_latents (on > dense_threshold of tokens): counted by the SAE
        alone over up to density_tokens cached tokens (details: n_density_tokens and
        firing_histogram: latents per log10 firing-rate bin, dead ones apart), causal (1.0
        when check_causal found no future-token leakage, else 0.0)
Per-item values (block["items"], popped by run_evals into the referee's items file): per
sequence squared error and variance (EV), active latents (L0), cosine sums, and CE / KL sums.
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
    item_entry,
    items_key,
    make_block,
    residuals_batched,
    splice,
    stored,
)
from saelab.evals.temporal import check_causal
from saelab.models import LanguageModel


def run_core(
    sae: SAELike,
    model: LanguageModel,
    layer: int,
    cache: ActivationCache,
    config: EvalConfig,
    density_cache: ActivationCache | None = None,
) -> dict:
    """SAEBench core block for `sae` on held-out sequences of `cache` (raw residuals); latent
    firing rates over up to config.density_tokens of `density_cache` (default: `cache`)."""
    recon_acts = cache.acts[: config.core_recon_seqs]
    recon = reconstruction_metrics(sae, recon_acts, config)
    density = density_metrics(sae, (density_cache or cache).acts, config)
    ce_tokens = cache.tokens[: config.core_ce_seqs]
    downstream = downstream_metrics(sae, model, layer, ce_tokens, config)
    causal = check_causal(sae, cache.acts[:2].float())
    metrics = {
        "reconstruction_quality": recon["reconstruction_quality"],
        "sparsity": recon["sparsity"],
        "model_performance_preservation": downstream["model_performance_preservation"],
        "model_behavior_preservation": downstream["model_behavior_preservation"],
        "misc": {**density["misc"], "causal": float(causal["causal"])},
    }
    details = {
        "causality": causal,
        "n_recon_tokens": recon["n_tokens"],
        "n_density_tokens": density["n_tokens"],
        "frac_dead_on_recon_tokens": recon["frac_dead"],  # the pre-issue-20 count, for reference
        "firing_histogram": density["histogram"],
    }
    block = make_block("core", sae, config, metrics, details)
    recon_id, ce_id = items_key(cache.tokens[: config.core_recon_seqs]), items_key(ce_tokens)
    block["items"] = {
        **{f"core.eval_result_metrics.{k}": v for k, v in recon["items"].items()},
        **{f"core.eval_result_metrics.{k}": v for k, v in downstream["items"].items()},
    }
    for path, entry in block["items"].items():
        entry["items"] = ce_id if "preservation" in path else recon_id
    return block


@torch.no_grad()
def reconstruction_metrics(sae: SAELike, acts: Tensor, config: EvalConfig) -> dict:
    """EV, MSE, cossim, L0, L1 on acts [N, L, D], with per-sequence sums for the items file."""
    sq_err, sum_x, sum_x2, cos, l0, l1 = ([] for _ in range(6))
    fires = torch.zeros(sae.d_sae, dtype=torch.float64)
    for i in range(0, acts.shape[0], config.batch_size):
        x = acts[i : i + config.batch_size].float()
        f = encode(sae, x).float()
        x_hat = decode(sae, f).float()
        sq_err.append((x - x_hat).double().pow(2).sum((1, 2)))
        sum_x.append(x.double().sum(1))
        sum_x2.append(x.double().pow(2).sum((1, 2)))
        cos.append(F.cosine_similarity(x, x_hat, dim=-1, eps=1e-8).double().sum(1))
        active = f != 0
        l0.append(active.double().sum((1, 2)))
        l1.append(f.abs().double().sum((1, 2)))
        fires += active.double().sum((0, 1))
    sq_err, sum_x, sum_x2, cos, l0, l1 = map(torch.cat, (sq_err, sum_x, sum_x2, cos, l0, l1))
    n_seq, seq_len, d = acts.shape
    n_tok = n_seq * seq_len
    mean = sum_x.sum(0) / n_tok
    # sum_t ||x_t - mean||^2 per sequence, with the mean over all sequences
    var = sum_x2 - 2 * (sum_x @ mean) + seq_len * mean.pow(2).sum()
    tokens = torch.full((n_seq,), float(seq_len), dtype=torch.float64)
    return {
        "n_tokens": n_tok,
        "reconstruction_quality": {
            "explained_variance": 1.0 - sq_err.sum().item() / var.sum().item(),
            "mse": sq_err.sum().item() / (n_tok * d),
            "cossim": cos.sum().item() / n_tok,
        },
        "sparsity": {"l0": l0.sum().item() / n_tok, "l1": l1.sum().item() / n_tok},
        "frac_dead": (fires == 0).double().mean().item(),
        "items": {
            "reconstruction_quality.explained_variance": item_entry("", sq_err, var, "one_minus"),
            "reconstruction_quality.cossim": item_entry("", cos, tokens),
            "sparsity.l0": item_entry("", l0, tokens),
        },
    }


@torch.no_grad()
def density_metrics(sae: SAELike, acts: Tensor, config: EvalConfig) -> dict:
    """Dead, rare and dense latents and a log10 firing-rate histogram, from the SAE alone over
    the first whole sequences of acts [N, L, D] that hold up to config.density_tokens."""
    n_seq = max(1, min(acts.shape[0], config.density_tokens // acts.shape[1]))
    fires = torch.zeros(sae.d_sae, dtype=torch.float64)
    batch = max(config.batch_size, 32)  # the SAE alone: bigger batches are cheap
    for i in range(0, n_seq, batch):
        x = acts[i : min(i + batch, n_seq)].float()
        fires += (encode(sae, x) != 0).double().sum((0, 1))
    n_tok = n_seq * acts.shape[1]
    freq = fires / n_tok
    alive = freq[freq > 0]
    edges = [e / 2 for e in range(-14, 1)]  # log10 rate bins -7, -6.5, ..., 0
    counts = torch.histogram(alive.log10().clamp(-7, 0).float(), torch.tensor(edges)).hist
    return {
        "n_tokens": n_tok,
        "misc": {
            "frac_dead_latents": _fraction(freq == 0),
            "frac_rare_latents": _fraction((freq > 0) & (freq < config.rare_threshold)),
            "frac_dense_latents": _fraction(freq > config.dense_threshold),
        },
        "histogram": {
            "log10_edges": edges,
            "counts": [int(c) for c in counts.tolist()],
            "dead": int((freq == 0).sum().item()),
        },
    }


def _fraction(flags: Tensor) -> float:
    return flags.double().mean().item()


@torch.no_grad()
def downstream_metrics(
    sae: SAELike, model: LanguageModel, layer: int, tokens: Tensor, config: EvalConfig
) -> dict:
    ids = torch.cat([torch.full_like(tokens[:, :1], model.bos_token_id), tokens], 1).long()
    mask = torch.ones_like(ids)
    resid = residuals_batched(model, ids, mask, layer, config.batch_size)
    base = stored(
        "core_clean_per_seq",
        input_fields(model, layer, ids, mask),
        lambda: _clean_and_ablation(model, layer, ids, resid, config.batch_size),
    )
    ce_sae, kl_sae = [], []
    for i in range(0, ids.shape[0], config.batch_size):
        rows = slice(i, i + config.batch_size)
        clean = _logprobs(model.logits_from(resid[rows], layer, mask[rows]))
        spliced = _logprobs(model.logits_from(splice(sae, resid[rows]), layer, mask[rows]))
        ce_sae.append(_ce_seq(spliced, ids[rows]))
        kl_sae.append(_kl_seq(clean, spliced))
    ce_sae, kl_sae = torch.cat(ce_sae), torch.cat(kl_sae)
    ce_clean, ce_zero, kl_zero = (base[k].double() for k in ("ce_clean", "ce_zero", "kl_zero"))
    n_pred = ids.shape[0] * (ids.shape[1] - 1)
    return {
        "model_performance_preservation": {
            "ce_loss_score": (ce_zero - ce_sae).sum().item() / (ce_zero - ce_clean).sum().item(),
            "ce_loss_with_ablation": ce_zero.sum().item() / n_pred,
            "ce_loss_with_sae": ce_sae.sum().item() / n_pred,
            "ce_loss_without_sae": ce_clean.sum().item() / n_pred,
        },
        "model_behavior_preservation": {
            "kl_div_score": 1.0 - kl_sae.sum().item() / kl_zero.sum().item(),
            "kl_div_with_ablation": kl_zero.sum().item() / n_pred,
            "kl_div_with_sae": kl_sae.sum().item() / n_pred,
        },
        "items": {
            "model_performance_preservation.ce_loss_score": item_entry(
                "", ce_zero - ce_sae, ce_zero - ce_clean
            ),
            "model_behavior_preservation.kl_div_score": item_entry(
                "", kl_sae, kl_zero, "one_minus"
            ),
        },
    }


def _clean_and_ablation(
    model: LanguageModel, layer: int, ids: Tensor, resid: Tensor, batch_size: int
) -> dict[str, Tensor]:
    """Per-sequence sums of CE (clean, zero-ablated) and KL(clean || ablated) [n_seq]."""
    mask = torch.ones_like(ids)
    ce_clean, ce_zero, kl_zero = [], [], []
    for i in range(0, ids.shape[0], batch_size):
        rows = slice(i, i + batch_size)
        clean = _logprobs(model.logits_from(resid[rows], layer, mask[rows]))
        zeroed = resid[rows].clone()
        zeroed[:, 1:] = 0
        ablated = _logprobs(model.logits_from(zeroed, layer, mask[rows]))
        ce_clean.append(_ce_seq(clean, ids[rows]))
        ce_zero.append(_ce_seq(ablated, ids[rows]))
        kl_zero.append(_kl_seq(clean, ablated))
    sums = {"ce_clean": ce_clean, "ce_zero": ce_zero, "kl_zero": kl_zero}
    return {k: torch.cat(v) for k, v in sums.items()}


def _logprobs(logits: Tensor) -> Tensor:
    return logits[:, :-1].float().log_softmax(-1)  # position t predicts token t + 1


def _ce_seq(logprobs: Tensor, ids: Tensor) -> Tensor:
    """Summed next-token cross-entropy of each sequence [B] (float64, CPU)."""
    picked = logprobs.gather(-1, ids[:, 1:, None].to(logprobs.device))[..., 0]
    return -picked.double().sum(1).cpu()


def _kl_seq(clean: Tensor, other: Tensor) -> Tensor:
    """Summed KL(clean || other) over each sequence's positions [B] (float64, CPU)."""
    # one row at a time: a [B, T, vocab] elementwise KL would be another ~0.5 GB at the defaults
    sums = [
        F.kl_div(o, c, log_target=True, reduction="sum").item()
        for o, c in zip(other, clean, strict=True)
    ]
    return torch.tensor(sums, dtype=torch.float64)
