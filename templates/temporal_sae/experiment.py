"""Train one sparse autoencoder on cached Gemma residual-stream sequences and save it.

    python experiment.py --out_dir=run_1                 # CPU default: <= 10 min on 2 cores
    python experiment.py --out_dir=run_t --budget=tiny   # seconds: what the tests run
    python experiment.py --out_dir=run_g --budget=gpu --model_name=google/gemma-2-2b  # CUDA

Writes to out_dir: the SAE as exported programs (encode.pt2, decode.pt2: saelab.artifact) and in
SAELens layout where one exists (cfg.json + sae_weights.safetensors), both reading raw residuals
(the activation normalisation folded in); final_info.json (training facts only), loss_curve.json,
config.json. The lab's referee measures the saved SAE after this script exits (core, sparse
probing, unlearning, temporal) on its own held-out data: numbers this script prints or writes
about those evals are not what the notes report. A twin from stability_seed goes to out_dir/twin.
Every knob is in Config; the lab (saelab: model, data, activation cache, evals) is read-only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from saelab.activations import ActivationCache, train_split
from saelab.artifact import save_artifact
from saelab.models import OFFLINE_MODEL, LanguageModel, default_device, default_dtype, load_model
from saelab.profiles import profile
from saelab.saelens import write_saelens

console = Console()


# ---------------------------------------------------------------------------- config
BF16_NATIVE = default_dtype(default_device()) == torch.bfloat16  # the bf16 knob's default


@dataclass
class Config:
    # run
    out_dir: str = ""  # required: where final_info.json, loss_curve.json and the SAE go
    budget: str = "cpu"  # "tiny" (seconds, tests) | "cpu" (<= 10 min, 2 cores) | "gpu" (CUDA)
    seed: int = 0  # init and batch order
    # data
    model_name: str = OFFLINE_MODEL  # "gemma-3-270m" offline; e.g. "google/gemma-2-2b" on CUDA
    layer: int = 6  # residual stream after block `layer` (0-indexed; Gemma 3 270M has 18)
    corpus: str = "offline-mix"  # saelab.data corpus name
    seq_len: int = 128  # tokens per sequence, BOS excluded; temporal evals look <= 128 back
    cache_tokens: int = 1_100_000  # tokens harvested into the activation cache (reused by runs)
    test_fraction: float = 0.05  # the tail the lab holds out (sealed: only the referee reads it)
    # sae
    architecture: str = "batchtopk"  # "batchtopk" | "topk" | "relu" (ReLU + L1)
    expansion: int = 4  # dict_size = expansion * d_model (4-8x)
    k: int = 48  # active latents per token (topk, batchtopk)
    sparsity_penalty: float = 0.04  # L1 coefficient (relu), inputs at unit mean squared norm
    auxk_alpha: float = 0.25  # Gao et al. 2024, A.2 use 1/32 over billions of tokens; 2.5M
    # tokens need dead latents revived faster (docs/recipes.md: fewer dead at 0.25)
    dead_tokens: int = 65_536  # unfired this many tokens = dead (16 steps); Gao: 10M
    # train
    train_tokens: int = 2_500_000  # tokens seen in training; ~2.4 epochs over the cpu cache
    batch_size: int = 32  # sequences per optimizer step: 4,096 tokens (Bussmann et al. 2024)
    learning_rate: float = 2e-3  # Adam peak; 2e-4 on 0.9M tokens learned far less (docs/recipes.md)
    warmup_steps: int = 20  # linear warm-up from 0 to learning_rate
    decay_start: float = 0.8  # fraction of steps after which lr decays linearly to 0
    log_every: int = 10  # steps between loss-curve points
    bf16: bool = BF16_NATIVE  # bf16 autocast for the matmuls where the hardware has it (2-5x on
    # AVX-512 CPUs; ~20x SLOWER on AVX2-only ones: 64 s vs 3.0 s a 4,096-token step); weights fp32
    stability_seed: int = -1  # >= 0: train a twin SAE from this seed for feature_stability (2x)

    def __post_init__(self) -> None:
        if not self.out_dir:
            raise ValueError("--out_dir is required, e.g. --out_dir=run_1")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget {self.budget!r} unknown: use one of {sorted(BUDGETS)}")
        if self.architecture not in ARCHITECTURES:
            known = list(ARCHITECTURES)
            raise ValueError(f"architecture {self.architecture!r} unknown: use one of {known}")
        if self.stability_seed == self.seed:
            raise ValueError("stability_seed must differ from seed (or be -1 to skip the twin)")


# Budget profiles override sizes (and the tiny run's lr): the SAE itself is the same in tests.
def lab_data(name: str) -> dict:
    """The data knobs of a lab profile: what the referee measures on (saelab.profiles)."""
    lab = profile(name)
    knobs = ("model_name", "layer", "corpus", "seq_len", "cache_tokens", "test_fraction")
    return {knob: getattr(lab, knob) for knob in knobs}


BUDGETS = {
    "tiny": dict(
        **lab_data("tiny"),  # a 16k-token slice; 20% held out tells rare latents from dead
        train_tokens=49_152,
        learning_rate=1e-3,  # 96 steps: too few for the CPU default's cautious lr
        batch_size=16,
        expansion=2,
        warmup_steps=10,
        dead_tokens=4_096,  # the run is 49k tokens: AuxK starts after 8 steps
        log_every=2,
    ),
    "cpu": lab_data("cpu"),
    "gpu": dict(
        **lab_data("gpu"),  # Gemma-2-2B layer 12, a 4M-token cache
        train_tokens=40_000_000,  # ~10 passes over the cache; SAEBench's SAEs saw ~500M
        batch_size=32,  # 4,096 tokens: SAELens's train_batch_size_tokens default
        learning_rate=3e-4,  # SAELens default; Bussmann et al. 2024 (BatchTopK) main.py
        warmup_steps=500,  # ~5% of 9,765 steps
        dead_tokens=1_000_000,  # Gao et al. 2024: 10M; BatchTopK code: 20k; SAELens: 4.1M
    ),
}
KNOB_GROUPS = {
    "run": ["out_dir", "budget", "seed"],
    "data": ["model_name", "layer", "corpus", "seq_len", "cache_tokens", "test_fraction"],
    "sae": [
        "architecture",
        "expansion",
        "k",
        "sparsity_penalty",
        "auxk_alpha",
        "dead_tokens",
    ],
    "train": [
        "train_tokens",
        "batch_size",
        "learning_rate",
        "warmup_steps",
        "decay_start",
        "log_every",
        "bf16",
        "stability_seed",
    ],
}


def parse_args(argv: list[str] | None = None) -> Config:
    """Knobs from the command line; --budget applies its profile first, explicit flags win."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    grouped = {name for names in KNOB_GROUPS.values() for name in names}
    other = [name for name in defaults if name not in grouped]  # knobs added by an idea
    for group_name, names in {**KNOB_GROUPS, "other": other}.items():
        group = parser.add_argument_group(group_name)
        for name in names:
            kind = type(defaults[name])
            group.add_argument(f"--{name}", type=flag if kind is bool else kind, default=None)
    given = {name: v for name, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        return Config(**{**BUDGETS.get(given.get("budget", Config.budget), {}), **given})
    except ValueError as error:
        parser.error(str(error))


def flag(text: str) -> bool:
    """--bf16=false: argparse's bool() would read any non-empty string as True."""
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: use true or false")
    return text.lower() in ("true", "1")


# ---------------------------------------------------------------------------- data
def load_data(cfg: Config) -> tuple[LanguageModel, ActivationCache]:
    """The frozen model and the training rows of its cached layer activations. The held-out
    rows are the lab's (sealed: agent code cannot read them); the referee measures on them."""
    model = load_model(cfg.model_name)
    args = (cfg.layer, cfg.corpus, cfg.seq_len, cfg.cache_tokens, cfg.test_fraction)
    return model, train_split(model, *args)


def train_batches(cache: ActivationCache, cfg: Config, steps: int, device) -> Iterator[Tensor]:
    """`steps` batches [B, L, D] of normalised sequences (bf16; fp32 with --bf16=false), rows
    shuffled, epochs as needed.

    The cache is read into memory once and batches index it directly: no float32 copy per batch
    (the bf16 matmuls under autocast read bf16 anyway).
    """
    full_batches_per_epoch = cache.n_seq // cfg.batch_size
    assert full_batches_per_epoch > 0, (
        f"the cache holds {cache.n_seq} training sequences, fewer than one batch of "
        f"{cfg.batch_size}: raise cache_tokens or lower batch_size"
    )
    acts_NLD = cache.acts.to(device) * cache.norm_scale  # bf16, unit mean squared norm
    acts_NLD = acts_NLD if cfg.bf16 else acts_NLD.float()  # no autocast: fp32 matmuls need fp32
    gen = torch.Generator().manual_seed(cfg.seed)
    for step in range(steps):
        if step % full_batches_per_epoch == 0:
            order = torch.randperm(cache.n_seq, generator=gen).to(device)
        i = step % full_batches_per_epoch * cfg.batch_size
        yield acts_NLD[order[i : i + cfg.batch_size]]


def data_mean(cache: ActivationCache, device) -> Tensor:
    """Mean normalised activation over up to 256 sequences: the decoder bias starts there."""
    n_seq = min(256, cache.n_seq)
    x_BLD = next(cache.sequence_batches(n_seq, seed=1, device=device))
    return x_BLD.flatten(0, 1).mean(0)


# ---------------------------------------------------------------------------- model
class SAE(nn.Module):
    """Linear encoder and decoder around a sparsifying activation, on [B, L, D] sequences.

    Subclasses choose `activate` and `penalty`; a temporal variant overrides `pre_acts`.
    """

    def __init__(self, d_in: int, d_sae: int, b_dec_init: Tensor):
        super().__init__()
        self.d_in, self.d_sae = d_in, d_sae
        W_dec_FD = torch.randn(d_sae, d_in, device=b_dec_init.device)
        W_dec_FD /= W_dec_FD.norm(dim=-1, keepdim=True)  # unit rows: a latent's size lives in f
        self.W_dec = nn.Parameter(W_dec_FD)
        self.W_enc = nn.Parameter(W_dec_FD.T.clone())  # Gao et al. 2024, sec. 2.3: tied init
        self.b_enc = nn.Parameter(torch.zeros(d_sae, device=b_dec_init.device))
        self.b_dec = nn.Parameter(b_dec_init.clone())  # the encoder sees centred inputs

    def pre_acts(self, x_BLD: Tensor) -> Tensor:
        # (x - b_dec) @ W_enc + b_enc, with b_dec folded into the bias: under autocast x goes
        # straight into the bf16 matmul, with no fp32 copy of x or of the [B, L, F] result
        bias_F = self.b_enc - self.b_dec @ self.W_enc
        return nn.functional.linear(x_BLD, self.W_enc.T, bias_F)  # (B, L, F)

    def activate(self, pre_BLF: Tensor) -> Tensor:
        raise NotImplementedError

    def encode(self, x_BLD: Tensor) -> Tensor:
        return self.activate(self.pre_acts(x_BLD))

    def decode(self, f_BLF: Tensor) -> Tensor:
        return nn.functional.linear(f_BLF, self.W_dec.T, self.b_dec)  # (B, L, D)

    def penalty(self, x_BLD, x_hat_BLD, pre_BLF, f_BLF, dead_F) -> Tensor:
        """Terms added to the reconstruction loss; zero for the base class."""
        return x_BLD.new_zeros(())

    def loss(self, x_BLD: Tensor, dead_F: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training objective: (loss, reconstruction mse, latents f)."""
        pre_BLF = self.pre_acts(x_BLD)
        f_BLF = self.activate(pre_BLF)
        x_hat_BLD = self.decode(f_BLF)
        n_tokens = x_BLD[..., 0].numel()
        mse = nn.functional.mse_loss(x_hat_BLD.float(), x_BLD.float(), reduction="sum") / n_tokens
        return mse + self.penalty(x_BLD, x_hat_BLD, pre_BLF, f_BLF, dead_F), mse, f_BLF


class TopKSAE(SAE):
    """Keep the k largest latents per token (Gao et al. 2024), plus AuxK for dead latents."""

    def __init__(self, d_in: int, d_sae: int, b_dec_init: Tensor, cfg: Config):
        super().__init__(d_in, d_sae, b_dec_init)
        self.k, self.auxk_alpha = cfg.k, cfg.auxk_alpha
        self.k_aux = d_in // 2  # Gao et al. 2024, A.2

    def activate(self, pre_BLF: Tensor) -> Tensor:
        values, index = pre_BLF.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre_BLF).scatter(-1, index, values.relu())

    def penalty(self, x_BLD, x_hat_BLD, pre_BLF, f_BLF, dead_F) -> Tensor:
        return self.auxk_alpha * auxk_loss(self, x_BLD - x_hat_BLD, pre_BLF, dead_F)


class BatchTopKSAE(TopKSAE):
    """Top k x tokens latents over the whole batch (Bussmann et al. 2024).

    Training mixes tokens across the batch, so inference uses a per-token threshold instead:
    an average of the smallest activation each batch kept. Evaluate in eval() mode.
    """

    threshold_beta = 0.99  # EMA of the per-batch threshold; short runs need a short memory
    sample_every = 8  # the batch threshold is read off every 8th token: an exact top-k over
    # all B x L x F values costs more than the rest of the step on CPU (single-threaded sort)

    def __init__(self, d_in: int, d_sae: int, b_dec_init: Tensor, cfg: Config):
        super().__init__(d_in, d_sae, b_dec_init, cfg)
        self.register_buffer("threshold", torch.tensor(-1.0, device=b_dec_init.device))

    def activate(self, pre_BLF: Tensor) -> Tensor:
        if not self.training:
            acts_BLF = pre_BLF.relu()
            return acts_BLF * (acts_BLF > self.threshold)
        with torch.no_grad():
            sample_NF = pre_BLF.flatten(0, -2)[:: self.sample_every]
            kept = sample_NF.flatten().topk(self.k * sample_NF.shape[0], sorted=False).values
            threshold = kept.min().float().clamp_min(0.0)  # >= 0: the ReLU comes free
        self.update_threshold(threshold)
        # F.threshold: one fused pass and a cheap backward (torch.where is 4x slower on CPU)
        return nn.functional.threshold(pre_BLF, threshold.item(), 0.0)

    @torch.no_grad()
    def update_threshold(self, batch_threshold: Tensor) -> None:
        if self.threshold < 0:
            self.threshold.copy_(batch_threshold)
        else:
            self.threshold.lerp_(batch_threshold, 1 - self.threshold_beta)


class ReluSAE(SAE):
    """ReLU latents with an L1 penalty (Bricken et al. 2023); unit decoder rows keep L1 honest."""

    def __init__(self, d_in: int, d_sae: int, b_dec_init: Tensor, cfg: Config):
        super().__init__(d_in, d_sae, b_dec_init)
        self.sparsity_penalty = cfg.sparsity_penalty

    def activate(self, pre_BLF: Tensor) -> Tensor:
        return pre_BLF.relu()

    def penalty(self, x_BLD, x_hat_BLD, pre_BLF, f_BLF, dead_F) -> Tensor:
        return self.sparsity_penalty * f_BLF.abs().sum(-1).mean()


def auxk_loss(sae: TopKSAE, error_BLD: Tensor, pre_BLF: Tensor, dead_F: Tensor) -> Tensor:
    """Gao et al. 2024, A.2: the top k_aux dead latents reconstruct the main model's error.

    Reads only the dead columns (few, once training runs). Normalised by the error's
    variance, so the term stays O(1) as reconstruction improves.
    """
    dead = dead_F.nonzero().squeeze(-1)
    if len(dead) == 0:
        return pre_BLF.new_zeros((), dtype=torch.float32)
    error_BLD = error_BLD.detach().float()
    dead_pre_BLF = pre_BLF[..., dead].relu()
    values, index = dead_pre_BLF.topk(min(sae.k_aux, len(dead)), dim=-1, sorted=False)
    f_dead_BLF = torch.zeros_like(dead_pre_BLF).scatter(-1, index, values)
    error_hat_BLD = nn.functional.linear(f_dead_BLF, sae.W_dec[dead].T).float()
    variance = (error_BLD - error_BLD.mean((0, 1))).pow(2).sum(-1).mean()
    return (error_hat_BLD - error_BLD).pow(2).sum(-1).mean() / variance.clamp_min(1e-8)


ARCHITECTURES = {"batchtopk": BatchTopKSAE, "topk": TopKSAE, "relu": ReluSAE}


def build_sae(cfg: Config, d_in: int, b_dec_init: Tensor) -> SAE:
    return ARCHITECTURES[cfg.architecture](d_in, cfg.expansion * d_in, b_dec_init, cfg)


def init_sae(cfg: Config, cache: ActivationCache, b_dec_init: Tensor) -> SAE:
    """A fresh SAE for `cfg.seed`. Random decoder rows, not data points: two seeds' data inits
    already match at feature stability 0.82 (random: 0.14), so stability would measure the init
    (docs/recipes.md)."""
    torch.manual_seed(cfg.seed)
    return build_sae(cfg, cache.d_model, b_dec_init)


# ---------------------------------------------------------------------------- train
def count_steps(cfg: Config) -> int:
    """Optimizer steps the token budget buys; the old system silently ran 0 of them."""
    tokens_per_step = cfg.batch_size * cfg.seq_len
    steps = cfg.train_tokens // tokens_per_step
    assert steps > 0, (
        f"train_tokens={cfg.train_tokens} is less than one batch ({cfg.batch_size} sequences x "
        f"{cfg.seq_len} tokens = {tokens_per_step}): no step would run; raise train_tokens"
    )
    assert steps >= cfg.warmup_steps, (
        f"{steps} steps is fewer than warmup_steps={cfg.warmup_steps}: the lr would never "
        "reach its peak; raise train_tokens or lower warmup_steps"
    )
    return steps


def lr_factor(step: int, steps: int, cfg: Config) -> float:
    """Linear warm-up, constant, then linear decay to 0 over the last (1 - decay_start)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_from = int(cfg.decay_start * steps)
    if step < decay_from:
        return 1.0
    return (steps - step) / max(1, steps - decay_from)


@torch.no_grad()
def constrain_decoder(sae: SAE) -> None:
    """Keep W_dec rows unit-norm: drop the gradient along each row, step, renormalise."""
    if sae.W_dec.grad is not None:
        along_F1 = torch.linalg.vecdot(sae.W_dec.grad, sae.W_dec).unsqueeze(-1)
        sae.W_dec.grad.addcmul_(along_F1, sae.W_dec, value=-1.0)
    sae.W_dec.div_(torch.linalg.vector_norm(sae.W_dec, dim=-1, keepdim=True))


def make_optimizer(sae: SAE, cfg: Config) -> torch.optim.Optimizer:
    # fused: one kernel for all parameters, 3-4x faster than the default loop on CPU
    return torch.optim.Adam(sae.parameters(), lr=cfg.learning_rate, fused=True)


def train_step(
    sae: SAE, optimizer: torch.optim.Optimizer, x_BLD: Tensor, dead_F: Tensor, cfg: Config
) -> tuple[Tensor, Tensor, Tensor]:
    """One optimizer step; returns (loss, mse, latents f). bf16 matmuls under autocast, fp32
    weights, optimizer state and losses."""
    with torch.autocast(x_BLD.device.type, torch.bfloat16, enabled=cfg.bf16):
        loss, mse, f_BLF = sae.loss(x_BLD, dead_F)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    constrain_decoder(sae)  # gradient projection before the step
    optimizer.step()
    constrain_decoder(sae)  # renormalise after it
    return loss, mse, f_BLF


def train(sae: SAE, batches: Iterator[Tensor], steps: int, cfg: Config) -> dict:
    """Adam on the SAE's loss; returns training facts and the loss curve."""
    optimizer = make_optimizer(sae, cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, cfg))
    unfired_tokens_F = torch.zeros(sae.d_sae, device=sae.W_dec.device)
    curve = {"step": [], "loss": []}
    tokens_seen, step, start = 0, 0, time.time()
    W_dec_init_FD = sae.W_dec.detach().clone()
    sae.train()
    with training_progress() as progress:
        task = progress.add_task("train", total=steps, loss=float("nan"))
        for step, x_BLD in enumerate(batches, start=1):
            dead_F = unfired_tokens_F >= cfg.dead_tokens
            loss, mse, f_BLF = train_step(sae, optimizer, x_BLD, dead_F, cfg)
            schedule.step()
            fired_F = f_BLF.flatten(0, 1).amax(0) > 0  # amax: 2x faster than any() on CPU
            unfired_tokens_F = (unfired_tokens_F + x_BLD.shape[0] * x_BLD.shape[1]) * ~fired_F
            tokens_seen += x_BLD.shape[0] * x_BLD.shape[1]
            if step == 1 or step % cfg.log_every == 0 or step == steps:
                curve["step"].append(step)
                curve["loss"].append(loss.item())
            progress.update(task, advance=1, loss=loss.item())
    seconds = time.time() - start
    # near 1: most latents still point where the random init put them, whatever the EV
    init_cos_F = nn.functional.cosine_similarity(sae.W_dec.detach(), W_dec_init_FD, dim=-1)
    return {
        "training_steps": step,
        "tokens_seen": tokens_seen,
        "final_loss": curve["loss"][-1] if curve["loss"] else None,
        "final_mse": mse.item() if step else None,
        "frac_dead_in_training": (unfired_tokens_F >= cfg.dead_tokens).float().mean().item(),
        "decoder_init_cosine": init_cos_F.median().item(),
        "train_seconds": seconds,
        "tokens_per_second": tokens_seen / max(seconds, 1e-9),
        "curve": curve,
    }


def training_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        console=console,
    )


def train_twin(cfg: Config, cache: ActivationCache, steps: int, b_dec_init: Tensor, device) -> SAE:
    """The same SAE from another seed (init and batch order), in eval mode: what
    feature_stability compares the main SAE with."""
    twin_cfg = dataclasses.replace(cfg, seed=cfg.stability_seed, stability_seed=-1)
    twin = init_sae(twin_cfg, cache, b_dec_init)
    train(twin, train_batches(cache, twin_cfg, steps, device), steps, twin_cfg)
    return twin.eval()


# ---------------------------------------------------------------------------- save
def save_sae(sae: SAE, scale: float, cfg: Config, out_dir: Path, example_BLD: Tensor) -> None:
    """The artifact the referee measures: encode/decode on RAW residuals (the input scale the
    SAE was trained with folded in), exported with torch.export; SAELens layout beside it."""
    sae.eval()  # BatchTopK switches to its per-token threshold: causal and batch-independent
    save_artifact(
        lambda x_BLD: sae.encode(x_BLD * scale),
        lambda f_BLF: sae.decode(f_BLF) / scale,
        example_BLD,
        out_dir,
        owner=sae,
    )
    save_saelens(sae, scale, cfg, out_dir)


def save_saelens(sae: SAE, scale: float, cfg: Config, out_dir: Path) -> None:
    """SAELens layout for the standard architectures (none for a variant SAELens lacks);
    folding the input scale in makes the saved SAE read raw residuals."""
    w = {name: tensor.detach().float().cpu() for name, tensor in sae.state_dict().items()}
    write_saelens(
        out_dir,
        cfg.architecture,
        w["W_enc"] * scale,
        w["b_enc"],
        w["W_dec"] / scale,
        w["b_dec"] / scale,
        k=cfg.k,
        threshold=w.get("threshold"),  # pre-activations are unchanged by the folding
        model_name=cfg.model_name,
        layer=cfg.layer,
        seq_len=cfg.seq_len,
    )


def write_results(out_dir: Path, facts: dict, cfg: Config) -> None:
    """Training facts only: what the referee cannot re-measure (it measures the SAE itself)."""
    curve = facts.pop("curve")
    (out_dir / "loss_curve.json").write_text(json.dumps(curve))
    (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    (out_dir / "final_info.json").write_text(json.dumps(facts, indent=2, default=float))


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = count_steps(cfg)

    model, train_cache = load_data(cfg)  # the referee measures on the lab's own held-out split
    device = model.device
    mean = data_mean(train_cache, device)
    sae = init_sae(cfg, train_cache, mean)
    console.print(
        f"[bold]{cfg.architecture}[/] SAE {sae.d_in} -> {sae.d_sae} on {cfg.model_name} "
        f"layer {cfg.layer}: {steps} steps x {cfg.batch_size * cfg.seq_len} tokens"
    )
    facts = train(sae, train_batches(train_cache, cfg, steps, device), steps, cfg)
    scale, example_BLD = train_cache.norm_scale, train_cache.acts[:2].float().to(device)
    save_sae(sae, scale, cfg, out_dir, example_BLD)  # first: nothing after training can lose it
    if cfg.stability_seed >= 0:
        twin = train_twin(cfg, train_cache, steps, mean, device)
        save_sae(twin, scale, cfg, out_dir / "twin", example_BLD)

    facts |= {
        "layer": cfg.layer,
        "dict_size": sae.d_sae,
        "learning_rate": cfg.learning_rate,
        "k": cfg.k if isinstance(sae, TopKSAE) else None,
        "sparsity_penalty": cfg.sparsity_penalty if isinstance(sae, ReluSAE) else None,
        "model_name": cfg.model_name,
        "architecture": cfg.architecture,
        "budget": cfg.budget,
    }
    write_results(out_dir, facts, cfg)
    console.print(f"wrote {out_dir / 'final_info.json'}")


if __name__ == "__main__":
    main()
