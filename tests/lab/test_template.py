"""templates/temporal_sae: the SAE classes and trainer on synthetic data, then the real experiment
at the tiny budget (Gemma 3 270M, a tiny cached slice) measured by the referee and validated
against template.json's rules, and an all-zero SAE that those rules must reject."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from orchestrator.templates import load_template
from orchestrator.trust.validate import validate_result, validate_run
from saelab.activations import held_out_split
from saelab.evals import EVALS, Normalized, run_evals
from saelab.profiles import profile
from saelab.referee import measure

TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "temporal_sae"
EV = "core.eval_result_metrics.reconstruction_quality.explained_variance"
L0 = "core.eval_result_metrics.sparsity.l0"


def true_directions(d: int = 32, n_true: int = 96) -> torch.Tensor:
    """The hidden features of the synthetic data. Not drawn from seed 0: an SAE initialised
    after torch.manual_seed(0) would then start with the answer in its first 96 rows."""
    directions = torch.randn(n_true, d, generator=torch.Generator().manual_seed(1234))
    return torch.nn.functional.normalize(directions, dim=-1)


def recovery(sae) -> float:
    """Mean over the true features of the best cosine any decoder row reaches."""
    rows = torch.nn.functional.normalize(sae.W_dec.detach(), dim=-1)
    return (rows @ true_directions().T).max(0).values.mean().item()


def synthetic_batches(n_batches: int, d: int = 32, n_true: int = 96, seed: int = 0):
    """Sequences of sparse combinations of hidden unit directions plus an offset: [B, L, D]."""
    directions = true_directions(d, n_true)  # the same for every seed
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        active = torch.rand(8, 16, n_true, generator=gen) < 4 / n_true
        coef = active * (1 + torch.rand(8, 16, n_true, generator=gen))
        batches.append(coef @ directions + 0.3)
    return batches


def small_cfg(ex, **overrides):
    knobs = dict(
        out_dir="unused",
        expansion=4,
        k=4,
        seq_len=16,
        batch_size=8,
        train_tokens=8 * 16 * 300,
        warmup_steps=10,
        dead_tokens=256,
        log_every=10,
        learning_rate=3e-3,
    )
    return ex.Config(**{**knobs, **overrides})


def explained_variance(sae, batches) -> float:
    x = torch.cat(batches)
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    return (
        1 - ((x - x_hat).pow(2).sum(-1).mean() / (x - x.mean((0, 1))).pow(2).sum(-1).mean()).item()
    )


# ---------------------------------------------------------------------------- unit
def test_bad_knob_is_a_one_line_error(ex, capsys):
    with pytest.raises(SystemExit):
        ex.parse_args(["--out_dir=r", "--architecture=gated"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "architecture 'gated' unknown" in err and "batchtopk" in err


def test_budget_profile_then_explicit_flags(ex):
    cfg = ex.parse_args(["--out_dir=r", "--budget=tiny", "--seq_len=48"])
    assert cfg.train_tokens == ex.BUDGETS["tiny"]["train_tokens"]
    assert cfg.seq_len == 48  # an explicit flag beats the profile
    assert ex.parse_args(["--out_dir=r"]).train_tokens == ex.Config.train_tokens


def test_zero_steps_is_refused_with_the_reason(ex):
    with pytest.raises(AssertionError, match="less than one batch"):
        ex.count_steps(small_cfg(ex, train_tokens=100))
    with pytest.raises(AssertionError, match="fewer than warmup_steps"):
        ex.count_steps(small_cfg(ex, train_tokens=8 * 16 * 5))


def test_lr_warms_up_then_decays_to_zero(ex):
    cfg = small_cfg(ex, warmup_steps=10, decay_start=0.8)
    factors = [ex.lr_factor(s, 100, cfg) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0 and factors[50] == 1.0
    assert factors[99] == pytest.approx(1 / 20) and factors[85] < factors[80]


@pytest.mark.parametrize("architecture", ["batchtopk", "topk", "relu"])
def test_init_is_tied_unit_norm_and_never_zero(ex, architecture):
    torch.manual_seed(0)
    b_dec = torch.full((32,), 0.3)
    sae = ex.build_sae(small_cfg(ex, architecture=architecture), 32, b_dec)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(128))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert torch.equal(sae.b_dec, b_dec)
    assert (sae.encode(synthetic_batches(1)[0]) > 0).any()  # latents fire from step 0


def test_topk_keeps_k_latents_and_decodes_them(ex):
    torch.manual_seed(0)
    sae = ex.build_sae(small_cfg(ex, architecture="topk"), 32, torch.zeros(32))
    f = sae.encode(synthetic_batches(1)[0])
    assert (f > 0).sum(-1).max() <= 4
    assert torch.allclose(sae.decode(f), f @ sae.W_dec + sae.b_dec, atol=1e-5)


def test_auxk_gives_dead_latents_a_gradient(ex):
    torch.manual_seed(0)
    sae = ex.build_sae(small_cfg(ex, architecture="topk"), 32, torch.zeros(32))
    dead = torch.zeros(128, dtype=torch.bool)
    dead[:64] = True
    x = synthetic_batches(1)[0]
    pre = sae.pre_acts(x)
    ex.auxk_loss(sae, x - sae.decode(sae.activate(pre)), pre, dead).backward()
    assert sae.W_enc.grad[:, :64].abs().sum() > 0
    assert sae.W_enc.grad[:, 64:].abs().sum() == 0  # live latents are left to the main loss


@pytest.mark.parametrize(
    ("architecture", "min_recovery"), [("batchtopk", 0.85), ("topk", 0.85), ("relu", 0.6)]
)
def test_training_finds_the_hidden_features(ex, architecture, min_recovery):
    """Loss falls, held-out data is reconstructed, and the decoder rows move from their random
    init (best cosine ~0.44 to the hidden features) onto the features themselves."""
    torch.manual_seed(0)
    # ReLU + L1 needs a strong penalty to get sparse on this data in few steps
    cfg = small_cfg(ex, architecture=architecture, sparsity_penalty=0.3, train_tokens=8 * 16 * 1200)
    batches = synthetic_batches(200)
    steps = ex.count_steps(cfg)
    sae = ex.build_sae(cfg, 32, torch.cat(batches).flatten(0, 1).mean(0))
    assert recovery(sae) < 0.5
    facts = ex.train(sae, (batches[i % 200] for i in range(steps)), steps, cfg)
    assert facts["training_steps"] == steps and facts["tokens_seen"] == steps * 8 * 16
    assert facts["curve"]["loss"][-1] < 0.5 * facts["curve"]["loss"][0]
    sae.eval()
    assert explained_variance(sae, synthetic_batches(4, seed=1)) > 0.7
    assert recovery(sae) > min_recovery
    assert facts["decoder_init_cosine"] < 0.9  # the diagnostic sees the rows move
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(128))


def test_two_seeds_trained_on_the_same_data_share_features(ex):
    """What feature_stability measures: training pulls two seeds' decoders together."""
    from saelab.evals.temporal import feature_stability

    batches = synthetic_batches(200)
    cfg = small_cfg(ex, architecture="topk", train_tokens=8 * 16 * 1200)
    steps = ex.count_steps(cfg)
    saes = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        saes.append(ex.build_sae(cfg, 32, torch.cat(batches).flatten(0, 1).mean(0)))
    assert feature_stability(*saes) < 0.5  # random directions in 32 dims match ~0.44
    for sae in saes:
        ex.train(sae, (batches[i % 200] for i in range(steps)), steps, cfg)
        sae.eval()
    assert feature_stability(*saes) > 0.8


# ---------------------------------------------------------------------------- end to end
TINY = profile("tiny")
SPLIT = ("layer", "corpus", "seq_len", "cache_tokens", "test_fraction")  # a split cache's key


def referee_json(run_dir: Path, evals: tuple[str, ...] = EVALS) -> dict:
    """What the referee writes for `run_dir`, measured in this process at the tiny sizes."""
    measured = measure(run_dir, TINY, evals)
    (run_dir / "referee.json").write_text(json.dumps(measured, default=float))
    return measured


@pytest.fixture(scope="module")
def tiny_run(ex, tmp_path_factory) -> Path:
    """The real experiment at the tiny budget: Gemma 3 270M, a 16k-token cached slice, then
    the referee's measurement of the SAE it saved."""
    out_dir = tmp_path_factory.mktemp("tiny") / "run_1"
    ex.main([f"--out_dir={out_dir}", "--budget=tiny"])
    referee_json(out_dir)
    return out_dir


def test_tiny_run_trains_and_passes_the_template_rules(tiny_run):
    info = json.loads((tiny_run / "final_info.json").read_text())
    curve = json.loads((tiny_run / "loss_curve.json").read_text())
    assert info["training_steps"] > 0 and info["tokens_seen"] > 0
    # step 1's loss is pure reconstruction (no latent is dead yet, so no AuxK term); the loss
    # curve then jumps by the AuxK term, so compare reconstruction with reconstruction
    assert info["final_mse"] < 0.5 * curve["loss"][0]
    assert curve["step"][-1] == info["training_steps"]
    assert not set(EVALS) & set(info), "the experiment no longer evaluates: the referee does"
    verdict = validate_run(tiny_run, load_template(TEMPLATE))
    assert verdict.ok, verdict.summary()
    assert verdict.sources["explained variance"] == "measured"
    assert verdict.sources["training steps"] == "reported"
    measured = json.loads((tiny_run / "referee.json").read_text())
    for eval_id in EVALS:
        assert measured[eval_id]["eval_type_id"] == eval_id
    assert measured["referee"]["purity"] == dict.fromkeys(measured["referee"]["purity"], 1.0)
    assert (tiny_run / "sae_weights.safetensors").is_file()


def test_the_experiment_trains_with_the_sealed_tree_unreachable(
    ex, tiny_run, tmp_path, blocked_sealed
):
    """Agent code's sandbox grants the training tree alone: experiment.py, and all it imports
    from saelab, trains and saves with nothing under the sealed tree reachable (tiny_run built
    the split cache first, as saelab.prepare does)."""
    out_dir = tmp_path / "run_s"
    ex.main([f"--out_dir={out_dir}", "--budget=tiny", "--train_tokens=8192"])
    assert (out_dir / "encode.pt2").is_file() and not blocked_sealed.exists()


def test_referee_numbers_equal_the_in_process_evals(ex, tmp_path):
    """The regression test of the move: an SAE measured from its exported programs scores what
    the in-process evals gave the module itself (the path experiment.py used to take)."""
    cfg = ex.parse_args([f"--out_dir={tmp_path}", "--budget=tiny", "--architecture=topk"])
    model, train_cache = ex.load_data(cfg)
    test_cache = held_out_split(model, *(getattr(TINY, k) for k in SPLIT))
    torch.manual_seed(0)
    sae = ex.build_sae(cfg, model.d_model, ex.data_mean(train_cache, "cpu")).eval()
    scale = train_cache.norm_scale
    every = dataclasses.replace(  # the referee counts dead latents over both splits
        test_cache,
        acts=torch.cat([train_cache.acts, test_cache.acts]),
        tokens=torch.cat([train_cache.tokens, test_cache.tokens]),
    )
    with torch.no_grad():
        before = run_evals(
            Normalized(sae, scale),
            model,
            cfg.layer,
            EVALS,
            test_cache,
            TINY.eval_config(),
            density_cache=every,
        )
    ex.save_sae(sae, scale, cfg, tmp_path, train_cache.acts[:2].float())
    after = referee_json(tmp_path)
    for eval_id in EVALS:
        for path, value in leaves(before[eval_id]["eval_result_metrics"]):
            assert after_value(after[eval_id]["eval_result_metrics"], path) == pytest.approx(
                value, rel=1e-4, abs=1e-5, nan_ok=True
            ), f"{eval_id}.{path}"


def leaves(tree: dict, prefix: str = "") -> list[tuple[str, float]]:
    found = []
    for key, value in tree.items():
        if isinstance(value, dict):
            found += leaves(value, f"{prefix}{key}.")
        elif isinstance(value, float | int) and not isinstance(value, bool):
            found.append((f"{prefix}{key}", value))
    return found


def after_value(tree: dict, path: str) -> float:
    for key in path.split("."):
        tree = tree[key]
    return tree


def test_a_twin_seed_measures_feature_stability(ex, tmp_path):
    """stability_seed trains the same SAE from a second seed; the referee measures the pair."""
    with pytest.raises(ValueError, match="stability_seed must differ"):
        ex.Config(out_dir="r", seed=3, stability_seed=3)
    out_dir = tmp_path / "run_s"
    ex.main([f"--out_dir={out_dir}", "--budget=tiny", "--stability_seed=1"])
    measured = referee_json(out_dir, ("temporal",))
    stability = measured["temporal"]["eval_result_metrics"]["temporal"]["feature_stability"]
    # the tiny SAEs barely leave their random init (~0.16 here); 1.0 would mean no twin at all
    assert 0 < stability < 0.99, stability
    assert measured["referee"]["twin_sha256"] not in (None, measured["referee"]["artifact_sha256"])


def test_saved_sae_reads_raw_residuals(ex, tiny_run):
    """SAELens layout with the normalisation folded in: same latents as the trained SAE."""
    from safetensors.torch import load_file

    weights = load_file(tiny_run / "sae_weights.safetensors")
    sae_cfg = json.loads((tiny_run / "cfg.json").read_text())
    assert weights["W_enc"].shape == (sae_cfg["d_in"], sae_cfg["d_sae"])
    assert weights["W_dec"].shape == (sae_cfg["d_sae"], sae_cfg["d_in"])
    assert set(weights) >= {"W_enc", "b_enc", "W_dec", "b_dec"}


def test_an_all_zero_sae_fails_the_rules(ex, tiny_run, tmp_path):
    """The old system's failure: zero weights. The referee's numbers must not pass."""
    cfg = ex.parse_args([f"--out_dir={tmp_path}", "--budget=tiny"])
    model, train_cache = ex.load_data(cfg)
    sae = ex.build_sae(cfg, model.d_model, ex.data_mean(train_cache, "cpu"))
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.zero_()
    ex.save_sae(sae, train_cache.norm_scale, cfg, tmp_path, train_cache.acts[:2].float())
    # keep the real training facts: the measured numbers alone must catch the zero SAE
    info = json.loads((tiny_run / "final_info.json").read_text())
    verdict = validate_result(info, load_template(TEMPLATE), referee_json(tmp_path))
    assert not verdict.ok
    failed = "\n".join(verdict.problems)
    assert EV in failed and L0 in failed


def test_a_sae_that_reads_future_tokens_fails_the_rules(tiny_run):
    info = json.loads((tiny_run / "final_info.json").read_text())
    measured = json.loads((tiny_run / "referee.json").read_text())
    measured["core"]["eval_result_metrics"]["misc"]["causal"] = 0.0  # as check_causal reports it
    verdict = validate_result(info, load_template(TEMPLATE), measured)
    assert not verdict.ok and "reads future tokens" in "\n".join(verdict.problems)


def test_a_reported_number_the_lab_cannot_reproduce_invalidates_the_run(tiny_run):
    """The copy-and-claim attack: whatever the experiment writes, the measured number counts,
    and a reported one that disagrees makes the run invalid, saying both."""
    info = json.loads((tiny_run / "final_info.json").read_text())
    measured = json.loads((tiny_run / "referee.json").read_text())
    claimed = json.loads(json.dumps(measured["core"]))
    claimed["eval_result_metrics"]["reconstruction_quality"]["explained_variance"] = 0.97
    verdict = validate_result({**info, "core": claimed}, load_template(TEMPLATE), measured)
    true_ev = measured["core"]["eval_result_metrics"]["reconstruction_quality"][
        "explained_variance"
    ]
    assert not verdict.ok
    assert f"reported 0.97, the lab measured {true_ev!r}" in verdict.problems[0]
    assert verdict.metrics["explained variance"] == true_ev


def test_plot_writes_readable_pngs(tiny_run, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("plot", TEMPLATE / "plot.py")
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    for run in ("run_0", "run_1"):
        shutil.copytree(tiny_run, tmp_path / run)
    noise = {"seeds": [0, 1, 2], "metrics": {plot.EV_PATH: {"mean": 0.8, "spread": 0.01}}}
    (tmp_path / "run_0" / "noise.json").write_text(json.dumps(noise))  # template.json's "noise"
    monkeypatch.chdir(tmp_path)
    plot.main()
    for name in ("loss_curves.png", "key_metrics.png", "frontier.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 10_000, name
    assert plot.load_spreads("run_0/noise.json") == {plot.EV_PATH: 0.01}
    fig, ax = plot.plt.subplots()
    plot.shade_band(ax, 0.9, 0.01)  # run_0 +- 2 seed spreads
    assert ax.patches[0].get_y() == pytest.approx(0.88)
    assert ax.patches[0].get_height() == pytest.approx(0.04)


@pytest.mark.slow
def test_cpu_default_meets_the_baseline_floor(tmp_path):
    """The full CPU default (<= 10 min once caches exist) through make_baseline's validation."""
    spec = importlib.util.spec_from_file_location("make_baseline", TEMPLATE / "make_baseline.py")
    make_baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_baseline)
    assert make_baseline.main([f"--out_dir={tmp_path / 'run_0'}"]) == 0
