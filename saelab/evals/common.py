"""Shared pieces of the evals: size knobs, the raw-space SAE wrapper, SAEBench blocks, memos."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import safetensors
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from saelab.cache import atomic_write, file_lock, sealed_dir, stable_key
from saelab.data import PROBING_FAMILIES
from saelab.models import LanguageModel

OPTION_ROW_TOKENS = 64  # a generous width of one (question, option) row, padding included


class SAELike(Protocol):
    """What every eval needs: encode(x[B,L,D]) -> f[B,L,F], decode(f) -> x_hat[B,L,D].

    Optional `device`: where the SAE computes; see sae_device.
    """

    d_in: int
    d_sae: int

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, f: Tensor) -> Tensor: ...


def sae_device(sae: SAELike) -> torch.device:
    """Where `sae` computes: its `device` attribute if it has one, else the device of its first
    parameter or buffer (an nn.Module) or of its first tensor attribute, else the CPU."""
    device = getattr(sae, "device", None)
    if device is not None:
        return torch.device(device)
    if isinstance(sae, nn.Module):
        tensors = itertools.chain(sae.parameters(), sae.buffers())
    else:
        tensors = (v for v in vars(sae).values() if isinstance(v, Tensor))
    first = next(tensors, None)
    return first.device if first is not None else torch.device("cpu")


@dataclass(frozen=True)
class EvalConfig:
    """Every eval's size knobs. The defaults fit all four evals in ~5 min on 2 CPU cores."""

    batch_size: int = 4  # sequences per forward pass: logits are [B, T, 262k] on Gemma 3
    # core
    core_recon_seqs: int = 64  # held-out sequences for EV / MSE / L0 / cossim
    core_ce_seqs: int = 8  # sequences spliced into the model for CE loss and KL
    # dead / rare / dense latents and the firing histogram: counted by the SAE alone over up to
    # this many cached tokens (the referee hands in its whole activation cache, training split
    # included: for the cpu profile that is 300k tokens, every token a cpu run trains on)
    density_tokens: int = 1_048_576
    dense_threshold: float = 0.1  # a latent firing on more than this fraction is dense
    rare_threshold: float = 1e-5  # a latent firing on fewer than this fraction (> 0) is rare
    # sparse probing
    probe_tasks: tuple[str, ...] | None = None  # None = the four default families
    probe_n_per_class: int = 500  # 1,000 balanced texts per task, split 80/20
    probe_seq_len: int = 64
    probe_ks: tuple[int, ...] = (1, 2, 5, 10, 20)
    # unlearning: questions before keeping the known ones; half choose the intervention, half
    # report it (saelab.evals.unlearning)
    unlearn_questions: int = 512  # forget questions (64% known: ~165 a half)
    unlearn_retain_n: int = 256  # retain questions (~92% known)
    # known questions per domain the grid is tried on (the select half's first ones): every
    # grid point reruns the upper layers on each row its clamp touches, so this caps its cost
    unlearn_select_questions: int = 64
    unlearn_batch_size: int = 32  # (question, option) rows per upper-layer pass: the head runs
    # only at the option's positions, so rows are cheap and bigger batches amortise the blocks
    unlearn_texts: int = 64  # forget / retain texts for latent firing frequencies
    unlearn_seq_len: int = 64
    # the intervention grid (SAEBench's shape); calibrated on Gemma 3 270M layer 6, where 20
    # latents at retain sparsity 0.01 already cost 40% of the retain answers
    unlearn_n_features: tuple[int, ...] = (5, 10, 20)
    unlearn_multipliers: tuple[float, ...] = (10.0, 25.0)
    unlearn_retain_sparsities: tuple[float, ...] = (0.001, 0.01)  # max retain firing rate
    # the retain probability ratio an intervention must keep (SAEBench: accuracy >= 0.99 on
    # 2B-it); calibrated on Gemma 3 270M layer 6
    unlearn_retain_threshold: float = 0.95
    unlearn_format: str = "likelihood"  # "likelihood" (option log-prob) | "letters" (A-D)
    # question sets and the texts latent firing rates are measured on: the offline sets, or hub
    # names for GPU users, e.g. "hf:cais/wmdp:wmdp-bio:test", "hf:cais/mmlu:college_biology:test"
    unlearn_forget_questions: str = "forget"
    unlearn_retain_questions: str = "retain"
    unlearn_forget_corpus: str = "forget"  # "forget" = HPO definitions; else a corpus name
    unlearn_retain_corpus: str = "retain"  # "retain" = CoQA stories; else a corpus name
    # temporal
    temporal_seqs: int = 32

    def tiny(self) -> EvalConfig:
        """Sizes for tests: seconds per eval, same code paths."""
        return dataclasses.replace(
            self,
            batch_size=4,
            core_recon_seqs=8,
            core_ce_seqs=2,
            probe_tasks=("language_id", "sentiment"),
            probe_n_per_class=40,
            probe_seq_len=32,
            unlearn_questions=16,
            unlearn_retain_n=16,
            unlearn_texts=8,
            unlearn_seq_len=32,
            unlearn_n_features=(10,),
            unlearn_multipliers=(25.0,),
            unlearn_retain_sparsities=(0.01,),
            temporal_seqs=8,
        )

    def gpu(self) -> EvalConfig:
        """Sizes for a CUDA machine (Gemma-2-2B, the gpu profile's 4M-token cache, 5% held out:
        1,563 sequences). Toward SAEBench's (Karvonen et al. 2025, Table 4: core CE on 3,200 and
        sparsity on 32,000 sequences of 128 tokens) as far as the held-out split and the offline
        sets allow; the retain threshold and intervention grid stay as calibrated on CPU."""
        return dataclasses.replace(
            self,
            batch_size=8,  # [8, 129, 256k] fp32 logits are 1.1 GB; core holds ~4 such at once
            core_recon_seqs=1536,  # 197k tokens: ~21 per latent at 9,216, so "dead" means rare
            core_ce_seqs=1024,  # 131k predicted tokens per SAE
            probe_seq_len=128,  # SAEBench's probing context; 500 per class is the offline reserve
            unlearn_questions=2048,
            unlearn_retain_n=1024,
            unlearn_texts=512,
            unlearn_seq_len=128,
            temporal_seqs=512,  # 65k tokens; the SAE alone runs, no model
        )

    def stored_tokens(self, seq_len: int) -> int:
        """About how many token positions' residuals the shared eval cache keeps for this
        config (probing texts, unlearning texts and answer options, core's CE sequences)."""
        n_tasks = len(self.probe_tasks or PROBING_FAMILIES)
        probing = n_tasks * 2 * self.probe_n_per_class * (1 + self.probe_seq_len)
        texts = 2 * self.unlearn_texts * (1 + self.unlearn_seq_len)
        questions = self.unlearn_questions + self.unlearn_retain_n
        options = questions * 4 * OPTION_ROW_TOKENS  # 4 options a question
        return probing + texts + options + self.core_ce_seqs * (1 + seq_len)


def encode(sae: SAELike, x: Tensor) -> Tensor:
    """`sae.encode(x)` on the SAE's device; the latents come back on x's device."""
    return sae.encode(x.to(sae_device(sae))).to(x.device)


def decode(sae: SAELike, f: Tensor) -> Tensor:
    """`sae.decode(f)` on the SAE's device; the reconstruction comes back on f's device."""
    return sae.decode(f.to(sae_device(sae))).to(f.device)


class Normalized:
    """Evaluates in raw residual space an SAE trained on inputs multiplied by `scale`."""

    def __init__(self, sae: SAELike, scale: float):
        self.sae, self.scale = sae, float(scale)
        self.d_in, self.d_sae = sae.d_in, sae.d_sae

    @property
    def device(self) -> torch.device:
        return sae_device(self.sae)

    def encode(self, x: Tensor) -> Tensor:
        return self.sae.encode(x * self.scale)

    def decode(self, f: Tensor) -> Tensor:
        return self.sae.decode(f) / self.scale


def make_block(
    eval_type_id: str,
    sae: SAELike,
    config: EvalConfig,
    metrics: dict,
    details: Any = None,
    unstructured: Any = None,
) -> dict:
    """One SAEBench-shaped result block."""
    return {
        "eval_type_id": eval_type_id,
        "eval_config": dataclasses.asdict(config),
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": metrics,
        "eval_result_details": details if details is not None else [],
        "eval_result_unstructured": unstructured,
        "sae_cfg_dict": sae_cfg_dict(sae),
    }


def sae_cfg_dict(sae: SAELike) -> dict:
    inner = sae.sae if isinstance(sae, Normalized) else sae
    cfg = {"d_in": sae.d_in, "d_sae": sae.d_sae, "class": type(inner).__name__}
    if isinstance(sae, Normalized):
        cfg["input_scale"] = sae.scale
    return cfg


# In-process memo of what does not depend on the SAE (clean losses, clean answers): evaluating
# several SAEs in one process runs only the upper layers per SAE.
_MEMO: dict[tuple, Any] = {}


def memo(key: tuple, compute):  # noqa: ANN001, ANN201 - any value
    if key not in _MEMO:
        _MEMO[key] = compute()
    return _MEMO[key]


def tensor_key(t: Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def model_key(model: LanguageModel, layer: int) -> tuple:
    return (id(model), model.name, layer)


def input_fields(model: LanguageModel, layer: int, ids: Tensor, mask: Tensor) -> dict:
    """What a clean (SAE-free) result on these token ids depends on: the disk-cache key."""
    return {
        "model": model.name,
        "dtype": str(model.dtype),
        "layer": layer,
        "ids": tensor_key(ids),
        "mask": tensor_key(mask),
    }


def stored(kind: str, fields: dict, compute: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """`compute()` once per machine: kept in the shared eval cache on disk and in memory.

    For what does not depend on the SAE, so each run of experiment.py (a new process) pays only
    for its own SAE. A file that does not load whole (full disk, kill mid-write) is recomputed.
    """
    path = sealed_dir("evals", kind) / f"{stable_key(fields)}.safetensors"

    def load_or_compute() -> dict[str, Tensor]:
        try:  # a hit takes no lock: the referee may read the sealed tree without writing it
            return load_file(str(path))
        except (OSError, safetensors.SafetensorError):
            pass
        with file_lock(path):
            try:
                return load_file(str(path))
            except (OSError, safetensors.SafetensorError):
                tensors = {k: v.cpu().contiguous() for k, v in compute().items()}
                atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
                return tensors

    return memo((kind, path.name), load_or_compute)


def residuals_batched(
    model: LanguageModel, ids: Tensor, mask: Tensor, layer: int, batch_size: int
) -> Tensor:
    """Residuals after block `layer` [B, T, D] fp32 on CPU, stored in the model's dtype."""

    def compute() -> dict[str, Tensor]:
        parts = [
            model.residuals(ids[i : i + batch_size], mask[i : i + batch_size], layer)
            for i in range(0, ids.shape[0], batch_size)
        ]
        return {"resid": torch.cat(parts)}

    return stored("residuals", input_fields(model, layer, ids, mask), compute)["resid"].float()


def splice(sae: SAELike, resid: Tensor, keep_error: bool = False, edit=None) -> Tensor:  # noqa: ANN001
    """Residuals with positions 1.. replaced by the SAE reconstruction; BOS kept untouched.

    keep_error keeps x and adds only what `edit` (a function of the latents) changes in the
    reconstruction, so a row whose latents the edit leaves alone comes back bit-identical.
    """
    x = resid[:, 1:].float()
    f = encode(sae, x)
    if keep_error:
        x_hat = x + (decode(sae, edit(f)) - decode(sae, f)) if edit is not None else x
    else:
        x_hat = decode(sae, edit(f) if edit is not None else f)
    return torch.cat([resid[:, :1].float(), x_hat], dim=1)


def item_entry(items: str, num: Sequence, den: Sequence | None = None, form: str = "ratio") -> dict:
    """One metric's per-item values for the items file (saelab.compare defines the form):
    value = mean_k(sum num[k] / sum den[k]), or 1 - that. num/den are [n] or [K, n]; den None
    means all ones (a plain mean). `items` names the item set (a digest), so runs measured on
    different items are never paired."""
    num_kn = _rows(num)
    den_kn = None if den is None else _rows(den)
    if den_kn is not None and [len(r) for r in den_kn] != [len(r) for r in num_kn]:
        raise ValueError("item_entry: num and den must have the same shape")
    return {"items": items, "form": form, "num": num_kn, "den": den_kn}


def _rows(values: Sequence) -> list[list[float]]:
    """[n] or [K, n] numbers as K rows of 7-significant-digit floats (compact JSON)."""
    array = torch.as_tensor(values, dtype=torch.float64)
    array = array[None] if array.dim() == 1 else array
    return [[float(f"{v:.7g}") for v in row] for row in array.tolist()]


def items_key(*parts: Tensor | str) -> str:
    """A short digest naming an item set (token ids, texts), for item_entry."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(tensor_key(part).encode() if isinstance(part, Tensor) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]
