"""Temporal eval: how persistent latents are along a sequence, and whether the SAE is causal.

Metrics (eval_result_metrics["temporal"]):
    consistency_short / _medium / _long: mean Jaccard overlap of the active latent sets at
        positions t and t + k, for k in 1-4 / 5-16 / 17-128 (bounded by seq_len - 1);
        0 where no latent fires
    feature_stability: mean best decoder cosine between the latents of `sae` and `sae_b`
        (both directions, PW-MCC style); None without sae_b
    feature_stability_random: the same for two random-init decoders of the same shape (the
        floor: ~0.14 at 640 x 2,560); feature_stability_normalized: (s - s_rand) / (1 - s_rand),
        0 at the floor and 1 for identical dictionaries; both None without sae_b
Per-item values (block["items"]): per sequence and lag, the shared and the union active-latent
counts behind each consistency score.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.activations import ActivationCache
from saelab.evals.common import (
    EvalConfig,
    SAELike,
    decode,
    encode,
    item_entry,
    items_key,
    make_block,
    sae_device,
)

# a few lags per range keep the cost flat in seq_len
LAGS = {
    "short": (1, 2, 3, 4),
    "medium": (5, 8, 12, 16),
    "long": (17, 32, 64, 128),
}
STABILITY_KEYS = ("feature_stability", "feature_stability_random", "feature_stability_normalized")


def run_temporal(
    sae: SAELike, cache: ActivationCache, config: EvalConfig, sae_b: SAELike | None = None
) -> dict:
    """SAEBench-shaped temporal block on held-out sequences of `cache`."""
    acts = cache.acts[: config.temporal_seqs]
    inter, union = lag_overlaps(sae, acts, config.batch_size)
    overlap = {k: _ratio(inter[k].sum().item(), union[k].sum().item()) for k in inter}
    metrics: dict = {}
    items = {}
    item_id = items_key(cache.tokens[: config.temporal_seqs])
    for name, lags in LAGS.items():
        present = [k for k in lags if k in overlap]
        values = [overlap[k] for k in present]
        metrics[f"consistency_{name}"] = sum(values) / len(values) if values else None
        if present:
            num = torch.stack([inter[k] for k in present])
            den = torch.stack([union[k] for k in present])
            path = f"temporal.eval_result_metrics.temporal.consistency_{name}"
            items[path] = item_entry(item_id, num, den)
    metrics.update(stability_metrics(sae, sae_b))
    details = {"overlap_by_lag": {str(k): v for k, v in overlap.items()}}
    block = make_block("temporal", sae, config, {"temporal": metrics}, details)
    block["items"] = items
    return block


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


@torch.no_grad()
def lag_overlaps(sae: SAELike, acts: Tensor, batch_size: int) -> tuple[dict, dict]:
    """Per lag k, per sequence: active latents shared by positions t and t + k, and in either
    (summed over t): ({k: [N]}, {k: [N]}), float64."""
    lags = [k for ks in LAGS.values() for k in ks if k < acts.shape[1]]
    inter: dict[int, list[Tensor]] = {k: [] for k in lags}
    union: dict[int, list[Tensor]] = {k: [] for k in lags}
    for i in range(0, acts.shape[0], batch_size):
        active = (encode(sae, acts[i : i + batch_size].float()) != 0).float()
        count = active.sum(-1)
        for k in lags:
            both = (active[:, :-k] * active[:, k:]).sum(-1)
            inter[k].append(both.double().sum(1))
            union[k].append((count[:, :-k] + count[:, k:] - both).double().sum(1))
    return {k: torch.cat(v) for k, v in inter.items()}, {k: torch.cat(v) for k, v in union.items()}


def stability_metrics(sae: SAELike, sae_b: SAELike | None) -> dict:
    """feature_stability against the twin, the random-init floor of the same shape, and the
    normalised score (s - s_rand) / (1 - s_rand); all None without a twin."""
    if sae_b is None:
        return dict.fromkeys(STABILITY_KEYS)
    s = feature_stability(sae, sae_b)
    s_rand = random_stability(sae.d_in, sae.d_sae, sae_b.d_sae)
    return {
        "feature_stability": s,
        "feature_stability_random": s_rand,
        "feature_stability_normalized": (s - s_rand) / (1.0 - s_rand),
    }


@functools.cache
def random_stability(d_in: int, d_sae: int, d_sae_b: int, seeds: tuple[int, int] = (0, 1)) -> float:
    """feature_stability of two untrained SAEs of this shape: decoder rows drawn isotropic
    (unit Gaussian rows, the template's init and any rotation-invariant one), one per seed.
    Measured, not derived; cached per shape (it depends on nothing else). ~0.14 at 640 x 2,560."""
    a, b = (_RandomDecoder(d_in, d, seed) for d, seed in zip((d_sae, d_sae_b), seeds, strict=True))
    return feature_stability(a, b)


class _RandomDecoder:
    """An SAE-like with random unit decoder rows, for random_stability."""

    def __init__(self, d_in: int, d_sae: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.W_dec = F.normalize(torch.randn(d_sae, d_in, generator=generator), dim=-1)
        self.d_in, self.d_sae = d_in, d_sae

    def decode(self, f: Tensor) -> Tensor:
        return f @ self.W_dec


@torch.no_grad()
def decoder_directions(sae: SAELike, chunk: int = 1024) -> Tensor:
    """Unit decoder direction of every latent [F, D], read through decode (any SAE class), on
    the SAE's device: the [F, F] cosines of feature_stability are a GPU's job.

    Each latent is decoded alone as a one-token sequence, so a decoder that mixes tokens
    cannot blend neighbouring latents into each other.
    """
    device = sae_device(sae)
    zero = sae.decode(torch.zeros(1, 1, sae.d_sae, device=device))[0, 0]
    rows = []
    for start in range(0, sae.d_sae, chunk):
        stop = min(start + chunk, sae.d_sae)
        one_hot = torch.zeros(stop - start, 1, sae.d_sae, device=device)
        one_hot[:, 0, start:stop] = torch.eye(stop - start, device=device)
        rows.append(sae.decode(one_hot)[:, 0] - zero)
    return F.normalize(torch.cat(rows).float(), dim=-1)


@torch.no_grad()
def feature_stability(sae: SAELike, sae_b: SAELike, chunk: int = 1024) -> float:
    a = decoder_directions(sae)
    b = decoder_directions(sae_b).to(a.device)
    best_a = torch.cat([(a[i : i + chunk] @ b.T).max(1).values for i in range(0, len(a), chunk)])
    best_b = torch.cat([(b[i : i + chunk] @ a.T).max(1).values for i in range(0, len(b), chunk)])
    return 0.5 * (best_a.mean().item() + best_b.mean().item())


@torch.no_grad()
def check_causal(sae: SAELike, x: Tensor, t: int | None = None, tol: float = 1e-4) -> dict:
    """Flag future-token leakage: perturb positions t+1.. of x[B,L,D]; nothing at <= t may move.

    Both the latents and the reconstruction at positions <= t are compared, so a decoder that
    looks ahead is caught as well as an encoder. Returns {"causal": bool,
    "max_relative_change": float (the larger of the two), "position": t}.
    """
    t = x.shape[1] // 2 if t is None else t
    noisy = x.clone()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(noisy[:, t + 1 :].shape, generator=gen) * x.std()
    noisy[:, t + 1 :] += noise
    f_clean, f_noisy = encode(sae, x), encode(sae, noisy)
    pairs = ((f_clean, f_noisy), (decode(sae, f_clean), decode(sae, f_noisy)))
    change = max(_relative_change(a[:, : t + 1], b[:, : t + 1]) for a, b in pairs)
    return {"causal": change <= tol, "max_relative_change": change, "position": t}


def _relative_change(before: Tensor, after: Tensor) -> float:
    return (before - after).abs().max().item() / (before.abs().max().item() + 1e-8)
