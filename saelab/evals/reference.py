"""A reference SAE with no training loop: what a faithful, sparse-ish code scores on the evals.

Used by the eval tests and benchmarks as the "clearly works" end of the honesty checks (the
all-zero SAE being the other end), and handy for calibrating a new eval by hand.
"""

from __future__ import annotations

import torch
from torch import Tensor


class PCASAE:
    """Top-k principal directions of x [N, D], split into +/- ReLU halves: 2k latents."""

    def __init__(self, x: Tensor, k: int, seed: int = 0):
        self.mean = x.mean(0)
        torch.manual_seed(seed)  # pca_lowrank is randomised
        _, _, self.basis = torch.pca_lowrank(x - self.mean, q=k, center=False)  # (D, k)
        self.d_in, self.d_sae = x.shape[1], 2 * k

    def encode(self, x: Tensor) -> Tensor:
        z = (x - self.mean) @ self.basis
        return torch.cat([z.relu(), (-z).relu()], -1)

    def decode(self, f: Tensor) -> Tensor:
        k = self.basis.shape[1]
        return (f[..., :k] - f[..., k:]) @ self.basis.T + self.mean
