"""Activation caches: packed in order, keyed, reused, rebuilt when damaged, batched correctly,
and split between the training tree and the sealed tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from saelab import activations
from saelab.activations import (
    ActivationCache,
    entry_dir,
    harvest,
    harvest_split,
    held_out_split,
    pack_sequences,
    train_split,
)
from saelab.cache import SaelabError, SealedError, cache_root, sealed_root
from saelab.models import LanguageModel

SEQ_LEN = 16
LAYER = 6


def _harvest(lm: LanguageModel, texts: list[str], layer: int = LAYER, **kw) -> ActivationCache:
    return harvest(
        lm, layer, texts, seq_len=SEQ_LEN, n_tokens=100, batch_size=4, progress=False, **kw
    )


@pytest.fixture
def count_forwards(lm: LanguageModel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of lm.residuals, i.e. whether a harvest really ran the model."""
    calls: list[int] = []
    real = lm.residuals

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(lm, "residuals", counted)
    return calls


def test_pack_keeps_documents_apart_and_drops_tails(lm: LanguageModel) -> None:
    docs = ["one two three " * 20, "short", "alpha beta gamma delta " * 15]
    ids = [lm.tokenizer(d, add_special_tokens=False).input_ids for d in docs]
    n_full = [len(i) // 8 for i in ids]
    assert n_full[1] == 0
    packed = pack_sequences(lm.tokenizer, docs, seq_len=8, n_seq=sum(n_full))
    expected = [ids[0][i * 8 : (i + 1) * 8] for i in range(n_full[0])]
    expected += [ids[2][i * 8 : (i + 1) * 8] for i in range(n_full[2])]
    assert packed.tolist() == expected


def test_pack_says_when_the_corpus_is_too_small(lm: LanguageModel) -> None:
    with pytest.raises(SaelabError, match="only .* full sequences .* lower n_tokens"):
        pack_sequences(lm.tokenizer, ["a few words"], seq_len=8, n_seq=5)


def test_harvest_stores_stop_at_layer_residuals_without_bos(
    lm: LanguageModel, tiny_texts: list[str], tmp_cache: Path
) -> None:
    cache = _harvest(lm, tiny_texts)
    assert cache.acts.shape == (7, SEQ_LEN, lm.d_model) and cache.acts.dtype == torch.bfloat16
    assert cache.tokens.shape == (7, SEQ_LEN) and cache.path.is_relative_to(tmp_cache)
    assert cache.meta["n_tokens"] == 7 * SEQ_LEN and cache.meta["layer"] == LAYER
    ids = torch.cat([torch.full((2, 1), lm.bos_token_id), cache.tokens[:2].long()], dim=1)
    direct = lm.residuals(ids, torch.ones_like(ids), LAYER)[:, 1:]
    stored, direct = cache.acts[:2].float(), direct.float()  # fp32 where the CPU has no bf16
    torch.testing.assert_close(stored, direct, rtol=0.02, atol=0.02 * direct.abs().max())
    # BOS dropped: no stored row has BOS's huge norm (10-30x the rest at this layer).
    norms = cache.acts.float().norm(dim=-1)
    assert norms.max() < 3 * norms.median()
    assert cache.meta["mean_sq_norm"] == pytest.approx(norms.pow(2).mean().item(), rel=1e-3)


def test_second_harvest_reuses_the_cache(
    lm: LanguageModel, tiny_texts: list[str], tmp_cache: Path, count_forwards: list[int]
) -> None:
    first = _harvest(lm, tiny_texts)
    n_forwards = len(count_forwards)
    assert n_forwards > 0
    second = _harvest(lm, tiny_texts)
    assert len(count_forwards) == n_forwards, "a valid cache must not run the model again"
    assert second.path == first.path and torch.equal(second.acts, first.acts)


def test_cache_keys_separate_layers_and_corpora(
    lm: LanguageModel, tiny_texts: list[str], tmp_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {"format": 1, "model": lm.name, "layer": 6, "corpus": "offline-mix",
            "corpus_fingerprint": "abc", "seq_len": 16, "n_seq": 8}  # fmt: skip
    variants = [{"layer": 7}, {"corpus": "other"}, {"corpus_fingerprint": "abd"},
                {"seq_len": 32}, {"n_seq": 9}, {"model": "google/gemma-2-2b"}]  # fmt: skip
    dirs = {entry_dir(base)} | {entry_dir({**base, **v}) for v in variants}
    assert len(dirs) == len(variants) + 1
    # Real harvests: named corpora go through saelab.data; different names -> different entries.
    corpora = {"corpus-a": tiny_texts, "corpus-b": tiny_texts[::-1]}
    monkeypatch.setattr(activations.data, "load_corpus", lambda name: corpora[name])
    monkeypatch.setattr(activations.data, "corpus_fingerprint", lambda name: f"fp-{name}")
    a6, b6, a5 = _harvest(lm, "corpus-a"), _harvest(lm, "corpus-b"), _harvest(lm, "corpus-a", 5)
    assert len({a6.path, b6.path, a5.path}) == 3
    assert not torch.equal(a6.tokens, b6.tokens)
    assert torch.equal(a6.tokens, a5.tokens) and not torch.equal(a6.acts, a5.acts)


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "drop_meta"])
def test_damaged_cache_is_rebuilt_not_trusted(
    lm: LanguageModel,
    tiny_texts: list[str],
    tmp_cache: Path,
    count_forwards: list[int],
    damage: str,
) -> None:
    good = _harvest(lm, tiny_texts)
    expected = good.acts.clone()
    n_forwards = len(count_forwards)
    acts_file = good.path / "acts.bin"
    if damage == "truncate":
        acts_file.write_bytes(acts_file.read_bytes()[:-1000])
    elif damage == "flip_byte":
        raw = bytearray(acts_file.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        acts_file.write_bytes(bytes(raw))
    else:
        (good.path / "meta.json").unlink()
    rebuilt = _harvest(lm, tiny_texts)
    assert len(count_forwards) > n_forwards, f"{damage}: the damaged cache was trusted"
    assert torch.equal(rebuilt.acts, expected)


@pytest.fixture
def small_cache(lm: LanguageModel, tiny_texts: list[str], tmp_cache: Path) -> ActivationCache:
    return _harvest(lm, tiny_texts)


def test_split_is_a_deterministic_tail_of_sequences(small_cache: ActivationCache) -> None:
    train, test = small_cache.split(test_fraction=0.2)
    assert (train.n_seq, test.n_seq) == (5, 2)
    assert torch.equal(torch.cat([train.acts, test.acts]), small_cache.acts)
    assert torch.equal(test.tokens, small_cache.tokens[5:])
    assert train.norm_scale == test.norm_scale == small_cache.norm_scale
    assert (train.meta["split"], test.meta["n_seq"]) == ("train", 2)
    with pytest.raises(ValueError, match="test_fraction"):
        small_cache.split(1.5)


def test_sequence_batches_keep_token_order_and_cover_each_sequence_once(
    small_cache: ActivationCache,
) -> None:
    batches = list(small_cache.sequence_batches(3, seed=1, normalize=False, epochs=2))
    assert [b.shape[0] for b in batches] == [3, 3, 1, 3, 3, 1]  # partial batch kept
    raw = small_cache.acts.float()
    for epoch in (batches[:3], batches[3:]):
        rows = torch.cat(epoch)
        # every row is a whole stored sequence, in token order, and each appears exactly once
        matches = [[torch.equal(r, s) for s in raw].index(True) for r in rows]
        assert sorted(matches) == list(range(small_cache.n_seq))
    again = list(small_cache.sequence_batches(3, seed=1, normalize=False, epochs=2))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    other = next(small_cache.sequence_batches(7, seed=2, normalize=False))
    assert not torch.equal(torch.cat(batches[:3]), other)


def test_token_batches_shuffle_all_tokens_once(small_cache: ActivationCache) -> None:
    batches = list(small_cache.token_batches(32, seed=0, normalize=False))
    tokens = torch.cat(batches)
    assert batches[0].shape == (32, small_cache.d_model)
    assert tokens.shape == (small_cache.n_tokens, small_cache.d_model)
    flat = small_cache.acts.float().reshape(-1, small_cache.d_model)
    assert not torch.equal(tokens, flat), "tokens should be shuffled"
    # the same multiset of rows: every stored token exactly once
    rows, counts = torch.unique(tokens, dim=0, return_counts=True)
    flat_rows, flat_counts = torch.unique(flat, dim=0, return_counts=True)
    assert torch.equal(rows, flat_rows) and torch.equal(counts, flat_counts)


def test_normalization_gives_unit_mean_squared_norm_and_folds_back(
    small_cache: ActivationCache,
) -> None:
    normed = torch.cat(list(small_cache.token_batches(64)))
    assert normed.pow(2).sum(-1).mean().item() == pytest.approx(1.0, rel=1e-3)
    raw = torch.cat(list(small_cache.token_batches(64, normalize=False)))
    torch.testing.assert_close(normed / small_cache.norm_scale, raw)


# ---------------------------------------------------------------------------- split caches
def _split(lm: LanguageModel, texts: list[str]) -> tuple[ActivationCache, ActivationCache]:
    return harvest_split(
        lm, LAYER, texts, seq_len=SEQ_LEN, n_tokens=100, test_fraction=0.2, batch_size=4,
        progress=False,
    )  # fmt: skip


def test_a_split_cache_holds_the_unsplit_rows_byte_for_byte_in_two_trees(
    lm: LanguageModel, tiny_texts: list[str], tmp_cache: Path
) -> None:
    """The held-out rows live only in the sealed tree, and are exactly what
    harvest(...).split() gives (the cut falls inside a batch of 4: rows 5 | 6-7)."""
    train, test = _split(lm, tiny_texts)
    whole_train, whole_test = _harvest(lm, tiny_texts).split(0.2)
    assert train.path.is_relative_to(cache_root()) and test.path.is_relative_to(sealed_root())
    assert not test.path.is_relative_to(cache_root())
    for part, whole in ((train, whole_train), (test, whole_test)):
        assert torch.equal(part.acts, whole.acts) and torch.equal(part.tokens, whole.tokens)
        assert part.norm_scale == whole.norm_scale  # the whole cache's, on both sides
    assert (train.n_seq, test.n_seq, train.meta["split"], test.meta["split"]) == (
        5,
        2,
        "train",
        "test",
    )


def test_an_unsplit_cache_is_cut_without_a_forward_and_removed(
    lm: LanguageModel, tiny_texts: list[str], tmp_cache: Path, count_forwards: list[int]
) -> None:
    """Migration of a cache built before the split: rows copied, the old entry (held-out rows
    in the training tree) gone."""
    whole = _harvest(lm, tiny_texts)
    expected, n_forwards = whole.acts.clone(), len(count_forwards)
    train, test = _split(lm, tiny_texts)
    assert len(count_forwards) == n_forwards, "the model ran again: the old entry was not cut"
    assert not whole.path.exists()
    assert torch.equal(torch.cat([train.acts, test.acts]), expected)
    assert train.meta["mean_sq_norm"] == whole.meta["mean_sq_norm"]


def test_the_training_split_loads_with_the_sealed_tree_unreachable(
    lm: LanguageModel, tiny_texts: list[str], tmp_cache: Path, blocked_sealed: Path
) -> None:
    """What experiment.py reads needs the training tree alone; asking for the held-out rows or
    building a cache from agent code is one line saying why and what to do."""
    settings = (LAYER, tiny_texts, SEQ_LEN, 100, 0.2)
    with pytest.raises(SaelabError, match=r"no activation cache .*\(python -m saelab.prepare\)"):
        train_split(lm, *settings)
    blocked = str(blocked_sealed)
    with pytest.MonkeyPatch.context() as patch:  # the lab builds it, sealed tree reachable
        patch.setenv("SAELAB_SEALED", str(tmp_cache.parent / "sealed"))
        built, _ = _split(lm, tiny_texts)
    assert os.environ["SAELAB_SEALED"] == blocked
    train = train_split(lm, *settings)
    assert torch.equal(train.acts, built.acts) and train.path == built.path
    with pytest.raises(SealedError, match="sealed evaluation data .* read only by the referee"):
        held_out_split(lm, *settings)
