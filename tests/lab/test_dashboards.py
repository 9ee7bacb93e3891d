"""saelab.dashboards on a small linear SAE over random residuals: the panels are checked
against a brute-force computation of the same facts, and the referee's hook writes them
beside its JSON with their digest. No model: seconds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from saelab import dashboards

N, L, D, F, V = 24, 32, 16, 40, 50


class Linear(nn.Module):
    def __init__(self, d: int = D) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.W_enc = nn.Parameter(torch.randn(d, F) / d**0.5)
        self.b_enc = nn.Parameter(torch.linspace(-1.5, 0.5, F))  # frequencies differ
        self.W_dec = nn.Parameter(torch.randn(F, d))
        self.b_dec = nn.Parameter(torch.randn(d))
        self.d_sae = F

    def encode(self, x: Tensor) -> Tensor:
        return (x @ self.W_enc + self.b_enc).relu()

    def decode(self, f: Tensor) -> Tensor:
        return f @ self.W_dec + self.b_dec


def built() -> tuple[dict, Linear, Tensor, Tensor, Tensor]:
    torch.manual_seed(1)
    sae, acts = Linear(), torch.randn(N, L, D)
    tokens, unembed = torch.randint(V, (N, L)), torch.randn(V, D)
    with torch.no_grad():
        data = dashboards.build(sae, acts, tokens, unembed, lambda i: f"t{i}")
    return data, sae, acts, tokens, unembed


def test_latents_follow_the_stated_rule() -> None:
    data, sae, acts, _, _ = built()
    with torch.no_grad():
        codes = sae.encode(acts)
    fires = (codes > 0).sum(dim=(0, 1))
    chosen = [p["latent"] for p in data["latents"]]
    most = fires.argsort(descending=True)[: dashboards.N_FREQUENT].tolist()
    assert chosen[: dashboards.N_FREQUENT] == most
    peaks = codes.amax(dim=(0, 1))
    rest = [i for i in range(F) if i not in most and fires[i] >= dashboards.MIN_FIRINGS]
    assert chosen[dashboards.N_FREQUENT :] == sorted(rest, key=lambda i: -peaks[i])[:3]
    assert data["rule"] == dashboards.LATENT_RULE


def test_contexts_are_the_top_activations_with_the_firing_token_marked() -> None:
    data, sae, acts, tokens, _ = built()
    with torch.no_grad():
        codes = sae.encode(acts)
    panel = data["latents"][0]
    code = codes[..., panel["latent"]]
    best = code.flatten().topk(dashboards.N_CONTEXTS)
    shown = [c["activation"] for c in panel["contexts"]]
    assert shown == best.values.tolist()
    seq, pos = divmod(int(best.indices[0]), L)
    first = panel["contexts"][0]
    assert first["tokens"][first["at"]] == f"t{int(tokens[seq, pos])}"
    assert abs(first["activations"][first["at"]] - float(code[seq, pos])) < 1e-3
    assert sum(panel["histogram"]["counts"]) == int((code > 0).sum())
    assert panel["frequency"] == int((code > 0).sum()) / (N * L)


def test_logit_effects_are_the_decoder_row_times_the_unembedding() -> None:
    data, sae, _, _, unembed = built()
    panel = data["latents"][1]
    effects = unembed @ sae.W_dec[panel["latent"]].detach()
    top = effects.argsort(descending=True)[: dashboards.N_LOGITS]
    assert [t["token"] for t in panel["logits_up"]] == [f"t{int(i)}" for i in top]
    low = effects.argsort()[: dashboards.N_LOGITS]
    assert [t["token"] for t in panel["logits_down"]] == [f"t{int(i)}" for i in low]


def test_write_records_the_digest_of_what_it_wrote(tmp_path: Path) -> None:
    data = built()[0]
    path = tmp_path / dashboards.DASHBOARDS_FILE
    digest = dashboards.write(data, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert json.loads(path.read_text())["latents"][0]["contexts"]


def test_the_referee_writes_them_beside_its_json_for_a_real_artifact(tmp_path: Path) -> None:
    """The hook on the real model (tiny profile, no evals): Gemma's tokenizer and unembedding,
    the exported artifact, the digest in the referee's record."""
    from saelab.artifact import save_artifact
    from saelab.profiles import profile
    from saelab.referee import measure

    sae = Linear(d=640)  # Gemma 3 270M's residual width
    run_dir = tmp_path / "run"
    save_artifact(sae.encode, sae.decode, torch.randn(2, 8, 640), run_dir, owner=sae)
    out = tmp_path / "out" / "referee.json"
    out.parent.mkdir()
    record = measure(run_dir, profile("tiny"), evals=(), out=out)["referee"]
    written = out.with_name(dashboards.DASHBOARDS_FILE).read_bytes()
    assert record["dashboards_sha256"] == hashlib.sha256(written).hexdigest()
    data = json.loads(written)
    assert len(data["latents"]) == dashboards.N_FREQUENT + dashboards.N_PEAK
    context = data["latents"][0]["contexts"][0]
    assert all(isinstance(t, str) for t in context["tokens"]) and context["activation"] > 0
    assert len(data["latents"][0]["logits_up"]) == dashboards.N_LOGITS
