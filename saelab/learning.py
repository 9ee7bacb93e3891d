"""Did the latents learn? Measured by the referee from the saved SAE alone, no init needed.

A decoder row of a latent that learned points where the data varies; a row still at its random
init points anywhere. The referee reads each latent's decoder direction off the artifact
(decode(one-hot code) - decode(0): exact for an affine decoder, the direction the latent adds
for any other) and measures the held-out variance along it, relative to the variance along
random unit directions the lab draws (a random basis of the same shape, fixed seed):

    variance_ratio   median over live latents (those firing on the held-out tokens) of
                     var(x . d_r) / median over the random rows of var(x . u): ~1.0 for a basis
                     still at its random init, well above it once the latents learned
    live_fraction    the live latents' share of the dictionary (what the median is over)

Measured on the cpu profile (docs/recipes.md, "Learning, measured"): 0.99 at a random init,
1.18 for the 100-step lr 2e-4 lie, 2.79 for the tiny budget's 96 steps, 2.05-2.19 for run_0 at
3 seeds; template.json's learning rule reads variance_ratio (>= 1.5). A decoder the artifact's
code cannot run on a one-hot code measures 0.0, as a failed purity check does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.artifact import ExportedSAE

SEED = 20_261_204  # the random basis: one for every run; not 0-2, which experiments seed inits with
TOKENS = 8192  # held-out tokens measured on (the core eval's 64 sequences of 128)
CHUNK = 256  # one-hot codes decoded per call
# temporal_sae's learning rule (template.json): ~1.0 at init, 1.18 for the lying run, 2.05-2.19
# for run_0's three seeds (docs/recipes.md, "Learning, measured")
LEARNED_RATIO = 1.5


@torch.no_grad()
def decoder_directions(sae: ExportedSAE) -> Tensor:
    """Unit decoder direction of each latent [F, D], read off decode alone."""
    zero = sae.decode(torch.zeros(1, 1, sae.d_sae))[0, 0]
    rows = []
    for start in range(0, sae.d_sae, CHUNK):
        eye = torch.eye(sae.d_sae)[start : start + CHUNK].unsqueeze(0)
        rows.append(sae.decode(eye)[0] - zero)
    return torch.nn.functional.normalize(torch.cat(rows), dim=-1)


@torch.no_grad()
def learning(sae: ExportedSAE, x_BLD: Tensor) -> dict[str, float]:
    """The facts of the module docstring on held-out residuals x [B, L, D] (raw, float)."""
    try:
        return _learning(sae, x_BLD)
    except Exception:  # the artifact's own code failed: nothing learned can be shown
        return {"variance_ratio": 0.0, "live_fraction": 0.0}


def _learning(sae: ExportedSAE, x_BLD: Tensor) -> dict[str, float]:
    x_ND = x_BLD.flatten(0, 1)[:TOKENS].float()
    centred_ND = x_ND - x_ND.mean(0)
    cov_DD = centred_ND.T @ centred_ND / len(centred_ND)
    rows_FD = decoder_directions(sae)
    generator = torch.Generator().manual_seed(SEED)
    random_FD = torch.nn.functional.normalize(
        torch.randn(rows_FD.shape, generator=generator), dim=-1
    )
    live_F = _fires(sae, x_ND)
    variance_F = ((rows_FD @ cov_DD) * rows_FD).sum(-1)
    baseline = ((random_FD @ cov_DD) * random_FD).sum(-1).median()
    ratio = variance_F[live_F].median() / baseline if live_F.any() else torch.tensor(0.0)
    return {"variance_ratio": ratio.item(), "live_fraction": live_F.float().mean().item()}


def _fires(sae: ExportedSAE, x_ND: Tensor) -> Tensor:
    """Which latents fire on any of the tokens [F] (bool)."""
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for chunk in x_ND.split(1024):
        fired |= (sae.encode(chunk.unsqueeze(0))[0] != 0).any(0)
    return fired
