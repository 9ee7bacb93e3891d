"""The lab's pinned measurement settings, one profile per budget.

What a run is measured on is the lab's choice, not the experiment's: setup builds the caches of a
profile, the referee evaluates every run of a template with that profile's model, layer, sequence
length, held-out split and eval sizes, and the template names the profile (template.json).
An experiment may train on anything it likes; its numbers are only comparable because the
referee never lets it pick these.

    profile("cpu").layer          # 6
    profile("gpu").eval_config()  # EvalConfig().gpu(): sized for a CUDA machine
"""

from __future__ import annotations

from dataclasses import dataclass

from saelab.cache import SaelabError
from saelab.evals.common import EvalConfig
from saelab.models import OFFLINE_MODEL


@dataclass(frozen=True)
class Profile:
    name: str
    model_name: str  # saelab.models name or a hub id / local folder
    layer: int  # residual stream after block `layer` (0-indexed)
    corpus: str  # saelab.data corpus the activation cache is harvested from
    seq_len: int  # tokens per cached sequence, BOS excluded
    cache_tokens: int  # tokens in the activation cache
    test_fraction: float  # last fraction of the cache's sequences: the referee's held-out split
    eval_size: str  # "tiny" | "default" | "gpu": EvalConfig sizes

    def eval_config(self) -> EvalConfig:
        default = EvalConfig()
        return {"tiny": default.tiny(), "default": default, "gpu": default.gpu()}[self.eval_size]


PROFILES = {
    "cpu": Profile("cpu", OFFLINE_MODEL, 6, "offline-mix", 128, 1_100_000, 0.05, "default"),
    "tiny": Profile("tiny", OFFLINE_MODEL, 6, "offline-mix", 32, 16_384, 0.2, "tiny"),
    "gpu": Profile("gpu", "google/gemma-2-2b", 12, "offline-mix", 128, 4_000_000, 0.05, "gpu"),
}


def profile(name: str) -> Profile:
    """The named profile; one line naming the known ones when it is not one of them."""
    if name not in PROFILES:
        raise SaelabError(f"unknown lab profile {name!r}: use one of {', '.join(PROFILES)}")
    return PROFILES[name]
