"""The lab's SAE evals, each returning a SAEBench-shaped block.

    run_evals(sae, model, layer, evals=("core", "sparse_probing", "unlearning", "temporal"),
              test_cache=..., config=EvalConfig() or EvalConfig().tiny(), sae_b=None)
        -> {eval_type_id: block}

Every block has eval_type_id, eval_config, eval_id, datetime_epoch_millis,
eval_result_metrics, eval_result_details, eval_result_unstructured, sae_cfg_dict.
Per-item values: each eval's block carries "items" ({metric path: saelab.evals.common.
item_entry}), which run_evals moves into its `items` argument; saelab.compare reads them.
Metric paths (template validation rules reference them):
    core.eval_result_metrics.reconstruction_quality.{explained_variance, mse, cossim}
    core.eval_result_metrics.sparsity.{l0, l1}
    core.eval_result_metrics.model_performance_preservation.{ce_loss_score,
        ce_loss_with_ablation, ce_loss_with_sae, ce_loss_without_sae}
    core.eval_result_metrics.model_behavior_preservation.{kl_div_score, kl_div_with_ablation,
        kl_div_with_sae}
    core.eval_result_metrics.misc.{frac_dead_latents, frac_rare_latents, frac_dense_latents,
        causal}
    sparse_probing.eval_result_metrics.llm.{llm_test_accuracy, llm_top_{k}_test_accuracy}
    sparse_probing.eval_result_metrics.sae.{sae_test_accuracy, sae_top_{k}_test_accuracy}
        for k in 1, 2, 5, 10, 20
    unlearning.eval_result_metrics.unlearning.{unlearning_score, forget_accuracy,
        retain_accuracy, n_features, multiplier, retain_threshold, ...}
    temporal.eval_result_metrics.temporal.{consistency_short, consistency_medium,
        consistency_long, feature_stability, feature_stability_random,
        feature_stability_normalized (the last three None without sae_b)}
SAEs read raw residuals (BOS excluded); wrap one trained on scaled inputs in Normalized.
Devices: the model and the evals' tensors may live elsewhere than the SAE (on a GPU the
activation cache and stored residuals are CPU tensors, the SAE is on CUDA). Every tensor is
handed to the SAE on its device, and its outputs are moved back to where the eval computes.
An SAE's device is its `device` attribute if it has one, else that of its first parameter or
buffer (an nn.Module, e.g. a torch.export program's module()), else that of its first tensor
attribute, else the CPU (saelab.evals.common.sae_device).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from rich.console import Console

from saelab.activations import ActivationCache
from saelab.cache import sealed_dir, stable_key, write_json
from saelab.evals.common import EvalConfig, Normalized, SAELike
from saelab.evals.core import run_core
from saelab.evals.reference import PCASAE
from saelab.evals.sparse_probing import run_sparse_probing
from saelab.evals.temporal import check_causal, run_temporal
from saelab.evals.unlearning import run_unlearning
from saelab.models import LanguageModel

__all__ = ["EVALS", "EvalConfig", "Normalized", "check_causal", "run_evals", "warm_eval_cache"]

EVALS = ("core", "sparse_probing", "unlearning", "temporal")
NEEDS_CACHE = ("core", "temporal")
console = Console(stderr=True)


def run_evals(
    sae: SAELike,
    model: LanguageModel,
    layer: int,
    evals: Sequence[str] = EVALS,
    test_cache: ActivationCache | None = None,
    config: EvalConfig | None = None,
    sae_b: SAELike | None = None,
    progress: bool = True,
    items: dict | None = None,
    density_cache: ActivationCache | None = None,
) -> dict[str, dict]:
    """Run the named evals; returns {eval_type_id: SAEBench-shaped block}. `items`, a dict,
    receives {metric path: per-item entry} (saelab.compare); `density_cache` is what dead and
    rare latents are counted on (default: test_cache)."""
    config = config or EvalConfig()
    unknown = [name for name in evals if name not in EVALS]
    if unknown:
        raise ValueError(f"unknown evals {unknown}: choose from {', '.join(EVALS)}")
    if test_cache is None and any(name in NEEDS_CACHE for name in evals):
        raise ValueError("core and temporal evals need test_cache=<held-out ActivationCache>")
    runners = {
        "core": lambda: run_core(sae, model, layer, test_cache, config, density_cache),
        "sparse_probing": lambda: run_sparse_probing(sae, model, layer, config),
        "unlearning": lambda: run_unlearning(sae, model, layer, config),
        "temporal": lambda: run_temporal(sae, test_cache, config, sae_b),
    }
    blocks = {}
    for name in evals:
        start = time.perf_counter()
        blocks[name] = runners[name]()
        found = blocks[name].pop("items", {})
        if items is not None:
            items.update(found)
        seconds = time.perf_counter() - start
        blocks[name]["eval_result_unstructured"] = {"seconds": round(seconds, 2)}
        if progress:
            console.print(f"[bold]eval {name}[/bold] done in {seconds:.1f} s")
    return blocks


def warm_eval_cache(
    model: LanguageModel, layer: int, test_cache: ActivationCache, config: EvalConfig
) -> None:
    """Fill the shared eval cache for these settings by evaluating a reference SAE once; a
    marker makes later calls free. (The referee runs where it cannot write the shared cache.)"""
    fields = {"model": model.name, "layer": layer, "config": dataclasses.asdict(config)}
    fields["test"] = test_cache.meta["sha256"]["acts.bin"]  # which cache entry, by content
    marker = sealed_dir("evals") / f"warm-{stable_key(fields)}.json"
    if marker.is_file():
        return
    x_ND = test_cache.acts[: config.core_recon_seqs].float().flatten(0, 1)
    run_evals(PCASAE(x_ND, k=32), model, layer, EVALS, test_cache, config, progress=False)
    write_json(marker, fields)
