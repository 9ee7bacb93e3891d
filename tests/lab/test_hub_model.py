"""The GPU user's path, on a CPU: a hub-format Gemma 2 given by its folder, offline.

A tiny random Gemma2ForCausalLM (conftest's hub_gemma2: 4 layers, hidden 64, the Gemma
tokenizer's 262k vocabulary, eager attention with soft-capping) stands in for
google/gemma-2-2b. With HF_HUB_OFFLINE=1 and $SAELAB_CACHE in a fresh folder, `saelab.prepare`
builds its caches, the evals score an SAE on it through `load_model(<folder>)`, and
experiment.py trains an SAE the referee then measures: the code a GPU run takes; nothing may
depend on the offline model's sizes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from saelab import prepare
from saelab.activations import harvest_split
from saelab.cache import sealed_root
from saelab.evals import EVALS, run_evals
from saelab.evals.reference import PCASAE
from saelab.models import load_model
from saelab.profiles import profile
from saelab.referee import measure

LAB = profile("tiny")
LAYER = 2


@pytest.fixture(scope="module")
def prepared(hub_lab: Path, hub_gemma2: Path) -> dict[str, int]:
    """What the disk estimate said before `saelab.prepare` built the caches, then after."""
    settings = (str(hub_gemma2), LAYER, LAB.corpus, LAB.seq_len, LAB.cache_tokens)
    before = prepare.disk_needed(*settings, LAB.eval_config())
    argv = ["--profile", "tiny", "--model_name", str(hub_gemma2), "--layer", str(LAYER)]
    assert prepare.main(argv) == 0
    return {"before": before, "after": prepare.disk_needed(*settings, LAB.eval_config())}


def test_prepare_builds_the_activation_cache_of_a_hub_folder(hub_lab, prepared):
    """The training rows in the training tree, the held-out tail in the sealed one."""
    (train_meta,) = (hub_lab / "activations").glob("*/meta.json")
    (test_meta,) = (sealed_root() / "activations").glob("*/meta.json")
    n_seq = math.ceil(LAB.cache_tokens / LAB.seq_len)
    n_test = math.ceil(LAB.test_fraction * n_seq)
    for meta_path, rows in ((train_meta, n_seq - n_test), (test_meta, n_test)):
        meta = json.loads(meta_path.read_text())
        assert (meta["d_model"], meta["layer"], meta["seq_len"]) == (64, LAYER, LAB.seq_len)
        assert meta["n_tokens"] == rows * LAB.seq_len and meta["cache_n_seq"] == n_seq
        assert (meta_path.parent / "acts.bin").stat().st_size == meta["n_tokens"] * 64 * 2


def test_the_disk_estimate_reads_the_folder_config_and_frees_a_built_cache(prepared):
    acts = f"activations ({LAB.cache_tokens:,} tokens x d_model 64 x 2 bytes)"
    assert prepared["before"][acts] == LAB.cache_tokens * (64 * 2 + 4)  # bf16 acts + int32 ids
    assert prepared["after"][acts] == 0
    assert prepared["after"]["offline weights"] == 0  # hub weights live in the HF cache


def test_the_evals_score_an_sae_on_it_through_load_model(hub_gemma2, prepared):
    model = load_model(str(hub_gemma2))
    assert (model.d_model, model.n_layers, model.vocab_size) == (64, 4, 262144)
    assert model.hf_model.config._attn_implementation == "eager"
    settings = (LAYER, LAB.corpus, LAB.seq_len, LAB.cache_tokens, LAB.test_fraction)
    train, test = harvest_split(model, *settings, progress=False)
    sae = PCASAE(train.acts.float().flatten(0, 1), k=32)  # half the 64 dimensions
    blocks = run_evals(sae, model, LAYER, test_cache=test, config=LAB.eval_config())
    assert set(blocks) == set(EVALS)
    core = blocks["core"]["eval_result_metrics"]
    assert core["reconstruction_quality"]["explained_variance"] > 0.5
    assert core["sparsity"]["l0"] > 0 and core["misc"]["causal"] == 1.0
    # a random model predicts nothing, so its CE losses are only finite, not ordered
    assert all(math.isfinite(v) for v in core["model_performance_preservation"].values())
    assert blocks["core"]["sae_cfg_dict"]["d_in"] == 64
    probe = blocks["sparse_probing"]["eval_result_metrics"]["llm"]["llm_test_accuracy"]
    assert 0.5 <= probe <= 1.0
    temporal = blocks["temporal"]["eval_result_metrics"]["temporal"]
    assert 0 < temporal["consistency_short"] <= 1


def test_an_experiment_and_the_referee_run_on_it(ex, hub_gemma2, prepared, tmp_path):
    """The rest of a GPU user's path: experiment.py trains on the folder's model and saves the
    artifact; the referee measures it with the profile's settings for that model."""
    out_dir = tmp_path / "run_1"
    ex.main([f"--out_dir={out_dir}", "--budget=tiny", f"--model_name={hub_gemma2}", "--layer=2"])
    lab = dataclasses.replace(LAB, model_name=str(hub_gemma2), layer=LAYER)
    measured = measure(out_dir, lab)
    assert measured["referee"]["purity"] == dict.fromkeys(measured["referee"]["purity"], 1.0)
    assert measured["core"]["sae_cfg_dict"]["d_in"] == 64
    assert set(EVALS) <= set(measured)
    assert measured["core"]["eval_result_metrics"]["sparsity"]["l0"] > 0
