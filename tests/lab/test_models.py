"""The offline Gemma: loads, knows easy facts, and cuts cleanly at any layer."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch

from saelab.models import OFFLINE_MODEL, LanguageModel, ModelLoadError, load_model, model_width

FACTS = [("The capital of France is", " Paris"), ("Water is made of hydrogen and", " oxygen")]
# bf16 logits of this model are O(10); the cut re-runs the very same kernels, so any real bug
# (wrong mask, wrong rotary base, resid ignored) moves them by whole units.
BF16_ATOL = 0.1


def _first_token(lm: LanguageModel, word: str) -> int:
    return lm.tokenizer(word, add_special_tokens=False).input_ids[0]


def test_offline_model_shape(lm: LanguageModel) -> None:
    cfg = lm.hf_model.config
    assert (lm.d_model, lm.n_layers, lm.vocab_size) == (640, 18, 262144)
    assert model_width(OFFLINE_MODEL) == lm.d_model  # what the disk check assumes up front
    assert cfg.architectures == ["Gemma3ForCausalLM"]
    assert getattr(cfg, "quantization_config", None) is None


def test_tokenize_puts_bos_first_and_pads_right(lm: LanguageModel) -> None:
    ids, mask = lm.tokenize(["Hello world", "A much longer sentence than the first one"], 12)
    assert ids.shape == mask.shape == (2, 13)
    assert (ids[:, 0] == lm.tokenizer.bos_token_id).all()
    n_real = mask.sum(dim=1)
    assert n_real[0] < n_real[1]
    # right padding: ones then zeros, never a gap
    for row, n in zip(mask, n_real, strict=True):
        assert row[:n].all() and not row[n:].any()


def test_continues_easy_facts(lm: LanguageModel) -> None:
    ids, mask = lm.tokenize([prompt for prompt, _ in FACTS], seq_len=16)
    logits = lm.logits(ids, mask)
    last = mask.sum(dim=1) - 1
    for row, (prompt, answer) in enumerate(FACTS):
        top5 = logits[row, last[row]].float().topk(5).indices.tolist()
        decoded = [lm.tokenizer.decode(t) for t in top5]
        assert _first_token(lm, answer) in top5, f"{prompt!r} -> {decoded}, expected {answer!r}"


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # input_ids, attention_mask, logits


@pytest.fixture(scope="module", params=["long", "padded"])
def batch_with_logits(
    request: pytest.FixtureRequest, lm: LanguageModel, tiny_texts: list[str]
) -> Batch:
    """'long': one row past Gemma 3's 512-token sliding window (local and global layers then
    see different keys); 'padded': rows of different lengths. Full-forward logits, once."""
    if request.param == "long":
        ids, mask = lm.tokenize([" ".join(tiny_texts * 12)], seq_len=520)
        assert mask.sum() > lm.hf_model.config.sliding_window
    else:
        ids, mask = lm.tokenize(["Hello world", tiny_texts[0], "def f(x):\n    return x"], 24)
        assert not mask.all()
    return ids, mask, lm.logits(ids, mask)


@pytest.mark.parametrize("layer", [0, 6])
def test_residuals_equal_full_pass_and_skip_upper_blocks(
    lm: LanguageModel, tiny_texts: list[str], layer: int
) -> None:
    ids, mask = lm.tokenize(tiny_texts, seq_len=24)
    calls = []
    handle = lm.blocks[layer + 1].register_forward_hook(lambda *_: calls.append(1))
    try:
        resid = lm.residuals(ids, mask, layer)
    finally:
        handle.remove()
    assert calls == [], "blocks above the requested layer must not run"
    with torch.no_grad():
        full = lm.hf_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert resid.shape == (len(tiny_texts), 25, lm.d_model)
    torch.testing.assert_close(resid, full.hidden_states[layer + 1], rtol=0, atol=0)


@pytest.mark.parametrize("layer", [6, 17])
def test_logits_from_residuals_equal_full_forward(
    lm: LanguageModel, batch_with_logits: Batch, layer: int
) -> None:
    ids, mask, expected = batch_with_logits
    real = mask.bool()
    resid = lm.residuals(ids, mask, layer)
    got = lm.logits_from(resid, layer, mask)
    torch.testing.assert_close(got[real], expected[real], rtol=0.02, atol=BF16_ATOL)
    # The given residuals really are what the upper half reads: editing them changes the output
    # (a permutation of features, since a plain rescale is undone by the final RMSNorm).
    edited = lm.logits_from(resid.flip(-1), layer, mask)
    assert (edited[real] - expected[real]).abs().max() > 10 * BF16_ATOL
    # keep= runs the head only at the chosen positions, row-major, with the same values
    keep = torch.zeros_like(real)
    keep[:, 1::3] = True
    torch.testing.assert_close(lm.logits_from(resid, layer, mask, keep=keep), got[keep])
    # ... and the model is whole again afterwards (the cut swaps blocks out and back).
    assert all(type(b).__name__ == "Gemma3DecoderLayer" for b in lm.blocks)


def test_layer_out_of_range_is_one_clear_error(lm: LanguageModel) -> None:
    ids, mask = lm.tokenize(["x"], seq_len=2)
    with pytest.raises(ValueError, match=r"layer 18 is out of range .* use 0\.\.17"):
        lm.residuals(ids, mask, lm.n_layers)


def test_unknown_model_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline mode answers at once instead of retrying the network for ~25 s.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as info:
        load_model("no-such-org/no-such-model")
    message = str(info.value)
    assert "no-such-org/no-such-model" in message and "\n" not in message
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        model_width("no-such-org/no-such-model")  # the disk check reads the config first
