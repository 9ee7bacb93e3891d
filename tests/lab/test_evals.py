"""saelab.evals on the real Gemma 3 270M at the tiny config: honest in both directions.

An all-zero SAE must look broken (EV <= 0, L0 = 0, probes at chance, no unlearning); a
PCA-based reference SAE fitted in-test must look good (EV and CE-loss score > 0.5, probes
above chance); an SAE that mixes in future tokens must be flagged as non-causal.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from saelab.activations import ActivationCache, harvest
from saelab.cache import sealed_dir
from saelab.evals import EvalConfig, Normalized, check_causal, run_evals
from saelab.evals.reference import PCASAE
from saelab.models import LanguageModel

LAYER = 6
CONFIG = EvalConfig().tiny()


class ZeroSAE:
    """The old system's failure: every weight zero."""

    def __init__(self, d_in: int, d_sae: int):
        self.d_in, self.d_sae = d_in, d_sae

    def encode(self, x: Tensor) -> Tensor:
        return torch.zeros(*x.shape[:-1], self.d_sae)

    def decode(self, f: Tensor) -> Tensor:
        return torch.zeros(*f.shape[:-1], self.d_in)


class FutureMixingSAE(PCASAE):
    """Encodes the mean of the current and all later tokens: leaks the future."""

    def encode(self, x: Tensor) -> Tensor:
        future_sum = x.flip(1).cumsum(1).flip(1)
        count = torch.arange(x.shape[1], 0, -1, dtype=x.dtype)[None, :, None]
        return super().encode(future_sum / count)


@pytest.fixture(scope="module")
def caches(lm: LanguageModel) -> tuple[ActivationCache, ActivationCache]:
    cache = harvest(lm, LAYER, "offline-mix", 32, 32 * 48, progress=False)
    return cache.split(0.25)


@pytest.fixture(scope="module")
def reference(caches) -> PCASAE:
    return PCASAE(caches[0].acts.float().flatten(0, 1), k=64)


@pytest.fixture(scope="module")
def reference_run(lm, caches, reference) -> tuple[dict[str, dict], dict[str, dict]]:
    """The reference SAE's blocks and per-item values."""
    items: dict = {}
    blocks = run_evals(
        reference, lm, LAYER, test_cache=caches[1], config=CONFIG, progress=False, items=items
    )
    return blocks, items


@pytest.fixture(scope="module")
def reference_blocks(reference_run) -> dict[str, dict]:
    return reference_run[0]


@pytest.fixture(scope="module")
def zero_blocks(lm, caches) -> dict[str, dict]:
    sae = ZeroSAE(lm.d_model, 128)
    return run_evals(sae, lm, LAYER, test_cache=caches[1], config=CONFIG, progress=False)


def metrics(blocks: dict, eval_id: str, group: str) -> dict:
    return blocks[eval_id]["eval_result_metrics"][group]


def test_blocks_are_saebench_shaped(reference_blocks):
    keys = {
        "eval_type_id",
        "eval_config",
        "eval_id",
        "datetime_epoch_millis",
        "eval_result_metrics",
        "eval_result_details",
        "eval_result_unstructured",
        "sae_cfg_dict",
    }
    for eval_id, block in reference_blocks.items():
        assert set(block) == keys and block["eval_type_id"] == eval_id
    probe = reference_blocks["sparse_probing"]["eval_result_metrics"]
    assert set(probe["sae"]) == {"sae_test_accuracy"} | {
        f"sae_top_{k}_test_accuracy" for k in (1, 2, 5, 10, 20)
    }


def test_zero_sae_looks_broken(zero_blocks):
    assert metrics(zero_blocks, "core", "reconstruction_quality")["explained_variance"] <= 0
    assert metrics(zero_blocks, "core", "sparsity")["l0"] == 0
    assert metrics(zero_blocks, "core", "misc")["frac_dead_latents"] == 1.0
    assert metrics(zero_blocks, "core", "model_performance_preservation")["ce_loss_score"] < 0.5
    sae_probe = metrics(zero_blocks, "sparse_probing", "sae")
    assert abs(sae_probe["sae_test_accuracy"] - 0.5) <= 0.1
    assert abs(sae_probe["sae_top_1_test_accuracy"] - 0.5) <= 0.1
    assert metrics(zero_blocks, "unlearning", "unlearning")["unlearning_score"] == 0
    assert metrics(zero_blocks, "temporal", "temporal")["consistency_short"] == 0


def test_reference_sae_looks_good(reference_blocks):
    assert metrics(reference_blocks, "core", "reconstruction_quality")["explained_variance"] > 0.5
    ce = metrics(reference_blocks, "core", "model_performance_preservation")
    assert ce["ce_loss_score"] > 0.5
    assert ce["ce_loss_without_sae"] < ce["ce_loss_with_sae"] < ce["ce_loss_with_ablation"]
    assert metrics(reference_blocks, "core", "model_behavior_preservation")["kl_div_score"] > 0.5
    assert metrics(reference_blocks, "core", "sparsity")["l0"] > 0
    assert metrics(reference_blocks, "core", "misc")["causal"] == 1.0
    assert metrics(reference_blocks, "sparse_probing", "sae")["sae_test_accuracy"] > 0.6
    assert metrics(reference_blocks, "sparse_probing", "llm")["llm_test_accuracy"] > 0.7
    assert 0 < metrics(reference_blocks, "temporal", "temporal")["consistency_short"] <= 1


class LookAheadDecoderSAE(PCASAE):
    """Causal encoder, but the decoder blends in the next token's code."""

    def decode(self, f: Tensor) -> Tensor:
        ahead = torch.cat([f[:, 1:], f[:, -1:]], 1)
        return super().decode(0.5 * (f + ahead))


def test_future_mixing_sae_is_flagged(caches, reference):
    x = caches[1].acts[:2].float()
    train = caches[0].acts.float().flatten(0, 1)
    assert not check_causal(FutureMixingSAE(train, k=64), x)["causal"]
    assert not check_causal(LookAheadDecoderSAE(train, k=64), x)["causal"]
    assert check_causal(reference, x)["causal"]


def test_feature_stability_matches_an_sae_with_itself_only(caches, reference):
    from saelab.evals.temporal import run_temporal

    same = run_temporal(reference, caches[1], CONFIG, sae_b=reference)
    other = run_temporal(
        reference,
        caches[1],
        CONFIG,
        sae_b=PCASAE(torch.randn(512, 640, generator=torch.Generator().manual_seed(1)), k=64),
    )
    assert same["eval_result_metrics"]["temporal"]["feature_stability"] == pytest.approx(1.0)
    assert other["eval_result_metrics"]["temporal"]["feature_stability"] < 0.5


def test_normalized_evaluates_in_raw_space(caches, reference):
    """An SAE trained on inputs * scale, wrapped, reconstructs raw residuals like the raw one."""
    scale = 0.01
    scaled = PCASAE.__new__(PCASAE)
    scaled.__dict__.update(reference.__dict__, mean=reference.mean * scale)
    wrapped = Normalized(scaled, scale)
    x = caches[1].acts[:1].float()
    expected = reference.decode(reference.encode(x))
    assert torch.allclose(wrapped.decode(wrapped.encode(x)), expected, rtol=1e-4, atol=1e-3)
    assert not torch.allclose(scaled.decode(scaled.encode(x)), expected, rtol=1e-2, atol=1e-1)


def test_bad_requests_fail_with_one_line(lm, reference):
    with pytest.raises(ValueError, match="unknown evals"):
        run_evals(reference, lm, LAYER, evals=["core", "nope"], config=CONFIG)
    with pytest.raises(ValueError, match="test_cache"):
        run_evals(reference, lm, LAYER, evals=["core"], config=CONFIG)


def test_residuals_come_back_from_the_disk_cache(lm, tmp_cache, monkeypatch):
    from saelab.evals import common

    ids, mask = lm.tokenize(["The river rose after three days of rain."], 16)
    first = common.residuals_batched(lm, ids, mask, LAYER, batch_size=1)
    assert len(list(sealed_dir("evals", "residuals").glob("*.safetensors"))) == 1
    monkeypatch.setattr(common, "_MEMO", {})  # a new experiment process: memory empty, disk warm
    monkeypatch.setattr(lm, "residuals", lambda *a: pytest.fail("recomputed despite the cache"))
    assert torch.equal(common.residuals_batched(lm, ids, mask, LAYER, batch_size=1), first)


def test_a_truncated_cache_file_is_rebuilt(lm, tmp_cache, monkeypatch):
    from saelab.evals import common

    ids, mask = lm.tokenize(["Photosynthesis turns light into sugar."], 16)
    first = common.residuals_batched(lm, ids, mask, LAYER, batch_size=1)
    (path,) = sealed_dir("evals", "residuals").glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:100])  # a full disk or a kill mid-copy
    monkeypatch.setattr(common, "_MEMO", {})
    assert torch.equal(common.residuals_batched(lm, ids, mask, LAYER, batch_size=1), first)


def test_clean_losses_and_answers_come_back_from_the_disk_cache(
    lm, caches, reference, tmp_cache, monkeypatch
):
    """A later experiment.py on the machine runs the upper layers only for its own SAE."""
    from saelab.data import MCQuestion
    from saelab.evals import common, core, unlearning

    monkeypatch.setattr(common, "_MEMO", {})
    tokens = caches[1].tokens[:1]
    question = MCQuestion("Water is made of hydrogen and", [" oxygen", " gold"], 0, "retain", "x")
    first_core = core.downstream_metrics(reference, lm, LAYER, tokens, CONFIG)
    first_scores = unlearning._Scorer(lm, LAYER, [question], CONFIG)._scores(None)
    assert {p.name for p in sealed_dir("evals").iterdir()} >= {
        "core_clean_per_seq",
        "option_scores",
    }

    monkeypatch.setattr(common, "_MEMO", {})  # a new process: memory empty, disk warm
    monkeypatch.setattr(core, "_clean_and_ablation", lambda *a: pytest.fail("clean CE rerun"))
    monkeypatch.setattr(unlearning._Scorer, "_clean_scores", lambda s: pytest.fail("rescored"))
    assert core.downstream_metrics(reference, lm, LAYER, tokens, CONFIG) == first_core
    scorer = unlearning._Scorer(lm, LAYER, [question], CONFIG)
    assert torch.equal(scorer._scores(None), first_scores)
    assert scorer.correct(None) == [True]  # the model knows it, read from the stored scores


def test_an_edit_that_changes_no_latent_leaves_the_residuals_bit_identical(caches, reference):
    """What lets unlearning skip the rows a clamp does not touch."""
    from saelab.evals.common import splice

    resid = caches[1].acts[:2].float()
    assert torch.equal(splice(reference, resid, keep_error=True, edit=lambda f: f), resid)
    clamped = splice(reference, resid, keep_error=True, edit=lambda f: f * 0)
    assert not torch.equal(clamped, resid) and torch.equal(clamped[:, 0], resid[:, 0])


class ShrinkSAE:
    """x_hat = mean + scale * (x - mean) through +/- ReLU halves, plus `dead` latents that never
    fire: every reconstruction metric has a closed form. scale = 0 outputs the mean only."""

    def __init__(self, mean: Tensor, scale: float, dead: int = 0):
        self.mean, self.scale, self.dead = mean, scale, dead
        self.d_in = mean.shape[0]
        self.d_sae = 2 * self.d_in + dead

    def encode(self, x: Tensor) -> Tensor:
        z = self.scale * (x - self.mean)
        return torch.cat([z.relu(), (-z).relu(), x.new_zeros(*x.shape[:-1], self.dead)], -1)

    def decode(self, f: Tensor) -> Tensor:
        return f[..., : self.d_in] - f[..., self.d_in : 2 * self.d_in] + self.mean


def _offset_acts(seed: int) -> Tensor:
    """[12, 16, 32] activations with a mean of ~50 per dimension against a unit spread, the
    shape of real residual streams (their mean norm dwarfs the per-token variation)."""
    offset = 50.0 + 10.0 * torch.rand(32, generator=torch.Generator().manual_seed(0))
    return offset + torch.randn(12, 16, 32, generator=torch.Generator().manual_seed(seed))


def test_explained_variance_is_measured_against_the_data_mean():
    """An SAE that only outputs the (training) mean explains nothing, whatever the offset."""
    from saelab.evals.core import density_metrics, reconstruction_metrics

    acts = _offset_acts(0)
    train_mean = _offset_acts(1).flatten(0, 1).mean(0)
    for scale, dead in ((0.0, 0), (0.5, 7)):
        sae = ShrinkSAE(train_mean, scale, dead)
        out = reconstruction_metrics(sae, acts, CONFIG)
        x = acts.flatten(0, 1).double()
        x_hat = sae.decode(sae.encode(acts)).flatten(0, 1).double()
        sq_err = (x - x_hat).pow(2).sum().item()
        ev = 1 - sq_err / (x - x.mean(0)).pow(2).sum().item()
        f = sae.encode(acts).flatten(0, 1)
        assert out["reconstruction_quality"]["explained_variance"] == pytest.approx(ev, abs=1e-6)
        assert out["reconstruction_quality"]["mse"] == pytest.approx(sq_err / x.numel())
        assert out["sparsity"]["l0"] == pytest.approx((f != 0).sum().item() / x.shape[0])
        dead_fraction = ((f != 0).sum(0) == 0).double().mean().item()
        assert out["frac_dead"] == pytest.approx(dead_fraction)
        density = density_metrics(sae, acts, CONFIG)
        assert density["misc"]["frac_dead_latents"] == pytest.approx(dead_fraction)
        assert density["n_tokens"] == x.shape[0]
        if scale == 0.0:
            assert abs(ev) < 0.05 and dead_fraction == 1.0
        else:
            assert ev == pytest.approx(0.75, abs=0.02) and dead_fraction == pytest.approx(7 / 71)


class IdentitySAE:
    """Reconstructs perfectly: splicing it in changes nothing."""

    def __init__(self, d_in: int):
        self.d_in = self.d_sae = d_in

    def encode(self, x: Tensor) -> Tensor:
        return x

    def decode(self, f: Tensor) -> Tensor:
        return f


def test_ce_and_kl_scores_are_one_for_a_perfect_sae_and_zero_for_ablation(lm, caches):
    from saelab.evals.core import downstream_metrics

    tokens = caches[1].tokens[:2]
    for sae, score in ((IdentitySAE(lm.d_model), 1.0), (ZeroSAE(lm.d_model, 8), 0.0)):
        out = downstream_metrics(sae, lm, LAYER, tokens, CONFIG)
        ce = out["model_performance_preservation"]["ce_loss_score"]
        kl = out["model_behavior_preservation"]["kl_div_score"]
        assert (ce, kl) == (pytest.approx(score, abs=1e-3), pytest.approx(score, abs=1e-3))


class RateSAE:
    """Latent j fires at token positions t with t % periods[j] == 0 (0: never): known rates."""

    def __init__(self, d_in: int, periods: list[int]):
        self.d_in, self.d_sae, self.periods = d_in, len(periods), periods

    def encode(self, x: Tensor) -> Tensor:
        t = torch.arange(x.shape[0] * x.shape[1]).view(x.shape[0], x.shape[1], 1)
        periods = torch.tensor(self.periods)
        return ((periods > 0) & (t % periods.clamp(min=1) == 0)).float()

    def decode(self, f: Tensor) -> Tensor:
        return torch.zeros(*f.shape[:-1], self.d_in)


def test_dead_rare_and_dense_latents_and_their_histogram():
    """Counted over up to density_tokens whole sequences, by the SAE alone."""
    import dataclasses

    from saelab.evals.core import density_metrics

    acts = torch.zeros(64, 100, 4)  # 6,400 tokens, one batch of 64 sequences at the defaults
    # rates: 0 (dead), 1/6400 (once: rare below 1e-3), 1/100, 1 (dense)
    sae = RateSAE(4, [0, 6400, 100, 1])
    config = dataclasses.replace(CONFIG, rare_threshold=1e-3, batch_size=64)
    out = density_metrics(sae, acts, config)
    assert out["n_tokens"] == 6400
    assert out["misc"] == {
        "frac_dead_latents": 0.25,
        "frac_rare_latents": 0.25,
        "frac_dense_latents": 0.25,
    }
    hist = out["histogram"]
    assert hist["dead"] == 1 and sum(hist["counts"]) == 3
    edges = hist["log10_edges"]
    for rate in (1 / 6400, 1 / 100, 1.0):  # each live latent sits in the bin of its rate
        lo = max(i for i, e in enumerate(edges[:-1]) if e <= torch.tensor(rate).log10())
        assert hist["counts"][lo] >= 1
    capped = density_metrics(sae, acts, dataclasses.replace(config, density_tokens=1600))
    assert capped["n_tokens"] == 1600  # whole sequences up to the cap
    assert capped["histogram"]["counts"] != hist["counts"]  # the rare one fires at 1/1,600 now


def test_the_items_reproduce_every_metric_they_belong_to(reference_run):
    """The items file is the referee's numbers, item by item: saelab.compare recomputes each
    metric from it exactly (to the 7 digits the file keeps)."""
    from saelab.compare import metric_value

    blocks, items = reference_run
    expected = {
        "core.eval_result_metrics.reconstruction_quality.explained_variance",
        "core.eval_result_metrics.sparsity.l0",
        "core.eval_result_metrics.model_performance_preservation.ce_loss_score",
        "core.eval_result_metrics.model_behavior_preservation.kl_div_score",
        "sparse_probing.eval_result_metrics.sae.sae_test_accuracy",
        "sparse_probing.eval_result_metrics.sae.sae_top_1_test_accuracy",
        "unlearning.eval_result_metrics.unlearning.unlearning_score",
        "temporal.eval_result_metrics.temporal.consistency_short",
    }
    assert expected <= set(items)
    for path, entry in items.items():
        value = blocks
        for key in path.split("."):
            value = value[key]
        assert metric_value(entry) == pytest.approx(value, rel=1e-5, abs=1e-6), path
        assert len({len(row) for row in entry["num"]}) == 1 and entry["items"], path


def test_feature_stability_is_normalised_against_random_init_of_the_same_shape():
    """0 at the random-init floor, 1 for the same dictionary; the floor is measured per shape."""
    from saelab.evals.temporal import _RandomDecoder, random_stability, stability_metrics

    floor = random_stability(32, 96, 96)
    assert 0.3 < floor < 0.8  # best of 96 random cosines in 32 dims
    assert random_stability(640, 2560, 2560) == pytest.approx(0.14, abs=0.02)  # issue 20: 0.138
    same = _RandomDecoder(32, 96, seed=5)
    assert stability_metrics(same, same)["feature_stability_normalized"] == pytest.approx(1.0)
    others = stability_metrics(_RandomDecoder(32, 96, seed=7), _RandomDecoder(32, 96, seed=8))
    assert others["feature_stability_random"] == floor
    assert others["feature_stability_normalized"] == pytest.approx(0.0, abs=0.05)
    assert stability_metrics(same, None) == dict.fromkeys(others)


def test_unlearning_chooses_on_one_half_and_reports_on_the_other(reference_blocks):
    """SAEBench's split: the grid is scored on the select half only, the score on the report
    half only; both halves hold every answer position (blocks of 4 alternate)."""
    from saelab.evals.unlearning import HALF_BLOCK, QuestionSet

    index = torch.arange(16)
    select = (index // HALF_BLOCK) % 2 == 0
    assert set((index[select] % 4).tolist()) == set((index[~select] % 4).tolist()) == {0, 1, 2, 3}
    fake = QuestionSet.__new__(QuestionSet)
    fake.questions, fake.known = [None] * 16, torch.ones(16, dtype=torch.bool)
    halves = [set(fake.known_in(h).tolist()) for h in ("select", "report")]
    assert not halves[0] & halves[1] and halves[0] | halves[1] == set(range(16))
    m = metrics(reference_blocks, "unlearning", "unlearning")
    assert m["n_forget_questions"] + m["n_forget_select"] <= CONFIG.unlearn_questions
    for row in reference_blocks["unlearning"]["eval_result_details"]:
        assert {"forget_retained_select", "retain_retained_select"} <= set(row)


def test_the_paired_ci_finds_a_knob_and_not_a_seed(caches):
    """PCA SAEs on real residuals: k = 16 vs 64 latents differ in L0 and EV by construction,
    with a CI excluding 0; two seeds of k = 64 (randomised PCA) agree within the CI."""
    from saelab.compare import compare
    from saelab.evals.core import reconstruction_metrics

    train, test = caches[0].acts.float().flatten(0, 1), caches[1].acts

    def items(k: int, seed: int) -> dict:
        found = reconstruction_metrics(PCASAE(train, k=k, seed=seed), test, CONFIG)["items"]
        return {"metrics": {path: {**e, "items": "test"} for path, e in found.items()}}

    ev, l0 = "reconstruction_quality.explained_variance", "sparsity.l0"
    knob = compare([items(16, 0)], [items(64, 0)])["metrics"]
    assert knob[l0]["ci95"][1] < 0 and knob[ev]["ci95"][1] < 0  # fewer latents, less EV
    seeds = compare([items(64, 1)], [items(64, 0)])["metrics"]
    for path in (ev, l0):
        low, high = seeds[path]["ci95"]
        assert low <= 0 <= high, (path, seeds[path])
