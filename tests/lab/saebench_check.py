"""Runs inside .venvs/saebench (the real sae-bench 0.6.0 and SAELens, not the lab): SAEBench's own
core functions on the lab's tokens and SAE (SAELens layout), through a Hugging Face model
adapter; prints one JSON object for tests/lab/test_saebench.py to compare with saelab.

    python saebench_check.py WORK_DIR MODEL_DIR SAE_DIR LAYER DTYPE
    WORK_DIR/tokens.safetensors: "tokens" [N, 1 + seq_len] int64, BOS first in every row

Conventions aligned here, each also named in docs/interfaces.md:
- BOS: the lab never reconstructs or zero-ablates the BOS position (its residual is 10-30x
  the others); sae-bench's hooks replace every position. The adapter gives the hook's output
  back with position 0 restored, so both splice positions 1.. only.
- Sparsity and variance: ignore_tokens={BOS} masks the BOS position, as the lab's cache drops
  it.
- KL: sae-bench averages its per-position KL over all T positions, the lab over the T - 1
  that predict a next token; the last position is dropped from sae-bench's tensor here.
- CE: with no ignore_tokens, sae-bench's per-token loss covers the same T - 1 predictions.
- EV: sae-bench 0.6.0's explained_variance squares the per-dimension mean (a bug fixed in
  SAELens #659/#665), so EV is compared with SAELens's ExplainedVarianceCalculator instead.
"""

import json
import sys
import types
from pathlib import Path

import torch
from sae_bench.evals.core.main import get_recons_loss, get_sparsity_and_variance_metrics
from sae_lens import SAE
from sae_lens.evals import ExplainedVarianceCalculator
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


class _Stop(Exception):
    """Raised by the capture hook to end a forward pass at the SAE's layer."""


class HFAdapter:
    """The HookedRootModule surface sae-bench's core eval calls, over a Hugging Face causal LM:
    run_with_cache (one hook name), run_with_hooks and __call__ with return_type="both" and
    loss_per_token=True."""

    def __init__(self, hf_model, layer: int, hook_name: str):
        self.hf, self.layer, self.hook_name = hf_model, layer, hook_name

    def _forward(self, tokens, edit=None, stop=False):
        seen = {}

        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            seen["act"] = hidden
            if stop:
                raise _Stop
            if edit is None:
                return None
            new = edit(hidden, hook=None)
            new = torch.cat([hidden[:, :1], new[:, 1:]], 1)  # BOS kept, as the lab does
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handle = self.hf.model.layers[self.layer].register_forward_hook(hook)
        try:
            logits = self.hf(input_ids=tokens, use_cache=False).logits
        except _Stop:
            logits = None
        finally:
            handle.remove()
        return logits, seen["act"]

    def run_with_cache(self, tokens, names_filter=None, stop_at_layer=None, **_kwargs):
        _, act = self._forward(tokens, stop=True)
        return None, {self.hook_name: act}

    def __call__(self, tokens, return_type="both", loss_per_token=True, **_kwargs):
        return self._both(self._forward(tokens)[0], tokens)

    def run_with_hooks(self, tokens, return_type="both", fwd_hooks=(), **_kwargs):
        ((_name, edit),) = fwd_hooks
        return self._both(self._forward(tokens, edit=edit)[0], tokens)

    @staticmethod
    def _both(logits, tokens):
        logprobs = logits[:, :-1].float().log_softmax(-1)
        loss = -logprobs.gather(-1, tokens[:, 1:, None])[..., 0]
        return logits, loss


class SAE5Config:
    """sae-bench 0.6.0 reads sae.cfg.hook_name / hook_layer / hook_head_index, which SAELens 6
    moved under cfg.metadata: the same SAE, its config read the old way."""

    def __init__(self, sae, layer: int):
        self.sae, self.device = sae, sae.device
        self.cfg = types.SimpleNamespace(
            hook_name=sae.cfg.metadata.hook_name,
            hook_layer=layer,
            hook_head_index=None,
            d_sae=sae.cfg.d_sae,
        )

    def encode(self, x):
        return self.sae.encode(x)

    def decode(self, f):
        return self.sae.decode(f)


class TokenStore:
    """ActivationsStore.get_batch_tokens over fixed rows, in order."""

    def __init__(self, tokens):
        self.tokens, self.next = tokens, 0

    def get_batch_tokens(self, n):
        rows = self.tokens[self.next : self.next + n]
        self.next += n
        return rows


def main(work_dir: str, model_dir: str, sae_dir: str, layer: str, dtype: str) -> None:
    torch.set_num_threads(1)  # the CPU is shared
    tokens = load_file(Path(work_dir) / "tokens.safetensors")["tokens"]
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    sae = SAE5Config(SAE.load_from_disk(sae_dir), int(layer))
    model = HFAdapter(hf, int(layer), sae.cfg.hook_name)
    bos = int(tokens[0, 0])
    with torch.no_grad():
        sparsity, features = get_sparsity_and_variance_metrics(
            sae,
            model,
            TokenStore(tokens),
            n_batches=1,
            compute_l2_norms=False,
            compute_sparsity_metrics=True,
            compute_variance_metrics=True,
            compute_featurewise_density_statistics=True,
            eval_batch_size_prompts=len(tokens),
            model_kwargs={},
            ignore_tokens={bos},
        )
        recons = get_recons_loss(
            sae, model, tokens, None, compute_kl=True, compute_ce_loss=True, ignore_tokens=set()
        )
        calculator = ExplainedVarianceCalculator()
        act = model.run_with_cache(tokens)[1][model.hook_name][:, 1:].flatten(0, 1).float()
        calculator.add_batch(sae.decode(sae.encode(act)), act)
    density = torch.tensor(features["feature_density"])
    ce = {k: recons[k].double().mean().item() for k in recons if k.startswith("ce_")}
    kl = {k: recons[k][:, :-1].double().mean().item() for k in recons if k.startswith("kl_")}
    print(
        json.dumps(
            {
                "l0": sparsity["l0"],
                "frac_dead_latents": (density == 0).double().mean().item(),
                "cossim": sparsity["cossim"],
                "explained_variance_saelens": calculator.compute(),
                "explained_variance_saebench": sparsity["explained_variance"],
                **ce,
                **kl,
                "ce_loss_score": (ce["ce_loss_with_ablation"] - ce["ce_loss_with_sae"])
                / (ce["ce_loss_with_ablation"] - ce["ce_loss_without_sae"]),
                "kl_div_score": 1 - kl["kl_div_with_sae"] / kl["kl_div_with_ablation"],
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
