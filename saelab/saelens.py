"""Write a trained SAE in SAELens 6's disk layout, for the architectures SAELens also has.

    written = write_saelens(run_dir, "batchtopk", W_enc, b_enc, W_dec, b_dec, k=48,
                            threshold=0.31, model_name="gemma-3-270m", layer=6, seq_len=128)
    # then, with sae-lens installed: SAE.load_from_disk(run_dir)

Every architecture here encodes from pre = (x - b_dec) @ W_enc + b_enc (SAELens's
`apply_b_dec_to_input`) and decodes f @ W_dec + b_dec; only the activation differs:

    ours        SAELens     activation
    topk        topk        the k largest of relu(pre) per token, the rest 0
    batchtopk   jumprelu    relu(pre) * (pre > threshold), every latent's threshold our scalar
    relu        standard    relu(pre)

Our BatchTopK infers with relu(pre) * (relu(pre) > t); SAELens's JumpReLU computes
relu(pre) * (pre > t). They agree for every t: where pre > 0 the two tests are the same, and
where pre <= 0 both products are 0. This is how SAELens itself saves a BatchTopK SAE.

Any other architecture (a temporal variant that reads neighbouring tokens) has no SAELens
equivalent: nothing is written, so no file claims a meaning its weights do not have.
tests/lab/test_saelens.py loads each written layout in the real sae-lens and compares.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

log = logging.getLogger(__name__)

SAELENS_VERSION = "6.54.12"  # the release whose layout this writes; loaders key on >= 6.0
SAELENS_NAMES = {"topk": "topk", "batchtopk": "jumprelu", "relu": "standard"}


def write_saelens(
    out_dir: Path,
    architecture: str,
    W_enc: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
    *,
    k: int | None,
    threshold: float | Tensor | None,
    model_name: str,
    layer: int,
    seq_len: int,
) -> bool:
    """Write cfg.json + sae_weights.safetensors to out_dir; False (and nothing written) when
    `architecture` has no SAELens equivalent.

    W_enc [D, F], b_enc [F], W_dec [F, D], b_dec [D]: the SAE as it reads raw residuals (fold
    any input normalisation in first). k: latents per token (topk; recorded for batchtopk).
    threshold: batchtopk's inference threshold, a scalar or one per latent [F].
    seq_len: tokens per sequence after the BOS the model reads first (the lab's seq_len).
    """
    if architecture not in SAELENS_NAMES:
        log.info("architecture %r has no SAELens equivalent: no SAELens layout", architecture)
        return False
    weights = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    _check_shapes(weights)
    d_sae = W_enc.shape[1]
    if architecture == "topk" and (k is None or not 1 <= k <= d_sae):
        raise ValueError(f"topk needs 1 <= k <= d_sae ({d_sae}), got k={k}: pass k=")
    if architecture == "batchtopk":
        weights["threshold"] = _threshold_per_latent(threshold, b_enc)
    cfg = _cfg(architecture, W_enc.shape[0], d_sae, k, model_name, layer, seq_len)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().float().cpu().contiguous() for name, t in weights.items()}
    save_file(tensors, out_dir / "sae_weights.safetensors")
    (out_dir / "cfg.json").write_text(json.dumps(cfg, indent=2))
    return True


def _check_shapes(weights: dict[str, Tensor]) -> None:
    d, f = weights["W_enc"].shape if weights["W_enc"].ndim == 2 else (-1, -1)
    expected = {"W_enc": (d, f), "b_enc": (f,), "W_dec": (f, d), "b_dec": (d,)}
    if any(tuple(weights[name].shape) != shape for name, shape in expected.items()):
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in weights.items())
        raise ValueError(
            f"SAE weights do not fit together ({shapes}): "
            "pass W_enc [D, F], b_enc [F], W_dec [F, D], b_dec [D]"
        )


def _threshold_per_latent(threshold: float | Tensor | None, b_enc: Tensor) -> Tensor:
    """SAELens's JumpReLU holds one threshold per latent; a scalar is the same for all."""
    if threshold is None:
        raise ValueError("batchtopk needs its inference threshold: pass threshold=")
    threshold = torch.as_tensor(threshold, dtype=torch.float32)
    if threshold.numel() == 1:
        return torch.full_like(b_enc, threshold.item(), dtype=torch.float32)
    if threshold.shape != b_enc.shape:
        raise ValueError(
            f"threshold has shape {tuple(threshold.shape)}: pass a scalar or one per latent "
            f"{tuple(b_enc.shape)}"
        )
    return threshold


def _cfg(
    architecture: str,
    d_in: int,
    d_sae: int,
    k: int | None,
    model_name: str,
    layer: int,
    seq_len: int,
) -> dict:
    """cfg.json as SAELens 6's save_inference_model writes it."""
    cfg = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,  # pre = (x - b_dec) @ W_enc + b_enc
        "normalize_activations": "none",  # the caller folded its normalisation into the weights
        "reshape_activations": "none",
        "metadata": _metadata(architecture, k, model_name, layer, seq_len),
        "architecture": SAELENS_NAMES[architecture],
    }
    if architecture == "topk":
        cfg |= {"k": k, "rescale_acts_by_decoder_norm": False}
    return cfg


def _metadata(architecture: str, k: int | None, model_name: str, layer: int, seq_len: int) -> dict:
    """How the SAE was trained, in SAELens's words: the model reads BOS + seq_len tokens and
    the SAE saw every position but the BOS."""
    return {
        "sae_lens_version": SAELENS_VERSION,
        "sae_lens_training_version": None,  # trained here, not by SAELens
        "model_name": model_name,
        "hook_name": f"blocks.{layer}.hook_resid_post",
        "hook_head_index": None,
        "context_size": seq_len + 1,
        "prepend_bos": True,
        "seqpos_slice": [1, None],
        "model_from_pretrained_kwargs": {},
        # as SAELens records a BatchTopK it saved as jumprelu
        "training_architecture": architecture,
        "training_architecture_details": {"k": k} if architecture == "batchtopk" else {},
    }
