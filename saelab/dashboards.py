"""Feature dashboards: what a few of an SAE's latents respond to, on the lab's held-out texts.

Computed by the referee, in its sandbox, from the run's exported artifact (agent code never
sees these texts' latents), and written as `dashboards.json` beside referee.json, whose
`referee.dashboards_sha256` records its digest. Per chosen latent, the panels SAELens /
Neuronpedia dashboards show:

    contexts   the top-activating held-out tokens, each with the tokens around it and the
               latent's activation on every one of them (the firing token is `at`)
    histogram  the latent's non-zero activations over the held-out split
    logits     the tokens whose logits the decoder direction raises / lowers most: the
               direction (decode(e_i) - decode(0)) times the unembedding, no final norm,
               as SAELens dashboards compute it

Latents are chosen by LATENT_RULE (stated in the JSON). Why not `sae-dashboard` (0.8.0, PyPI):
it requires transformers < 4.57, transformer-lens < 3 and safetensors < 0.5 (the lab pins
transformers 5.24, transformer-lens 4.3), runs on a HookedTransformer, and reads SAELens SAEs,
which a temporal SAE has no layout for; these panels are a few dozen lines over the residuals
the referee already holds.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

DASHBOARDS_FILE = "dashboards.json"
N_FREQUENT = 3  # the most frequently firing latents
N_PEAK = 3  # then the highest peak activations among latents that fire often enough to judge
MIN_FIRINGS = 20  # held-out tokens a latent must fire on to be chosen for its peak
N_CONTEXTS = 8
BEFORE, AFTER = 10, 3  # tokens of context shown around the firing token
N_BINS = 20
N_LOGITS = 8
BATCH = 16  # sequences per encode call
LATENT_RULE = (
    f"the {N_FREQUENT} latents that fire on the most held-out tokens, then the {N_PEAK} with "
    f"the highest peak activation among the others firing on >= {MIN_FIRINGS} tokens"
)


class SAE(Protocol):
    d_sae: int

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, f: Tensor) -> Tensor: ...


@torch.no_grad()
def build(
    sae: SAE,
    acts: Tensor,
    tokens: Tensor,
    unembed: Tensor,
    token_text: Callable[[int], str],
) -> dict[str, Any]:
    """The dashboards of the chosen latents. acts [N, L, D] raw residuals of the held-out
    split, tokens [N, L] their ids, unembed [V, D] the model's output embedding, token_text an
    id's text."""
    start = time.perf_counter()
    codes = _encode(sae, acts)  # [N, L, F]
    fires = (codes > 0).sum(dim=(0, 1))
    chosen = choose(fires, codes.amax(dim=(0, 1)))
    directions = _directions(sae, chosen, acts.shape[-1])
    effects = directions @ unembed.float().T  # [n, V]
    latents = [
        _panel(int(i), codes[..., i], tokens, effects[j], token_text, int(fires[i]))
        for j, i in enumerate(chosen)
    ]
    return {
        "rule": LATENT_RULE,
        "n_tokens": int(tokens.numel()),
        "d_sae": int(codes.shape[-1]),
        "latents": latents,
        "seconds": round(time.perf_counter() - start, 2),
    }


def choose(fires: Tensor, peaks: Tensor) -> list[int]:
    """LATENT_RULE over per-latent firing counts and peak activations."""
    frequent = [int(i) for i in fires.argsort(descending=True)[:N_FREQUENT] if fires[i] > 0]
    others = peaks.clone().float()
    others[fires < MIN_FIRINGS] = -torch.inf
    others[frequent] = -torch.inf
    peak = [int(i) for i in others.argsort(descending=True)[:N_PEAK] if others[i] > -torch.inf]
    return frequent + peak


def _encode(sae: SAE, acts: Tensor) -> Tensor:
    parts = [sae.encode(acts[i : i + BATCH].float()) for i in range(0, acts.shape[0], BATCH)]
    return torch.cat(parts).float()


def _directions(sae: SAE, latents: Sequence[int], d_in: int) -> Tensor:
    """Each latent's decoder direction: decode(one-hot) - decode(0), one token per sequence
    (a temporal decoder sees no other token)."""
    code = torch.zeros(len(latents) + 1, 1, sae.d_sae)
    for row, latent in enumerate(latents):
        code[row, 0, latent] = 1.0
    out = sae.decode(code).float().reshape(len(latents) + 1, d_in)
    return out[:-1] - out[-1]


def _panel(
    latent: int,
    code: Tensor,
    tokens: Tensor,
    effects: Tensor,
    token_text: Callable[[int], str],
    fires: int,
) -> dict[str, Any]:
    """One latent's panels from its activations code [N, L]."""
    active = code[code > 0]
    counts, edges = torch.histogram(active, bins=N_BINS) if active.numel() else (None, None)
    return {
        "latent": latent,
        "frequency": fires / code.numel(),
        "max": float(code.max()),
        "mean_when_firing": float(active.mean()) if active.numel() else 0.0,
        "contexts": _contexts(code, tokens, token_text),
        "histogram": {
            "edges": [] if edges is None else edges.tolist(),
            "counts": [] if counts is None else [int(c) for c in counts],
        },
        "logits_up": _tokens(effects, token_text, descending=True),
        "logits_down": _tokens(effects, token_text, descending=False),
    }


def _contexts(
    code: Tensor, tokens: Tensor, token_text: Callable[[int], str]
) -> list[dict[str, Any]]:
    length = code.shape[1]
    top = code.flatten().topk(min(N_CONTEXTS, code.numel()))
    found = []
    for value, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        if value <= 0:
            break
        seq, pos = divmod(flat, length)
        lo, hi = max(0, pos - BEFORE), min(length, pos + AFTER + 1)
        found.append(
            {
                "activation": value,
                "at": pos - lo,
                "tokens": [token_text(int(t)) for t in tokens[seq, lo:hi]],
                "activations": [round(float(a), 4) for a in code[seq, lo:hi]],
            }
        )
    return found


def _tokens(
    effects: Tensor, token_text: Callable[[int], str], descending: bool
) -> list[dict[str, Any]]:
    values, ids = effects.sort(descending=descending)
    return [
        {"token": token_text(int(i)), "effect": round(float(v), 4)}
        for v, i in zip(values[:N_LOGITS], ids[:N_LOGITS], strict=True)
    ]


def write(data: dict[str, Any], path: Path) -> str:
    """Write the dashboards JSON and return its sha256 (what referee.json records)."""
    text = json.dumps(data, indent=1)
    Path(path).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()
