"""Residual-stream activations of a real model on a real corpus, harvested once, kept in order.

    cache = harvest("gemma-3-270m", layer=6, corpus="offline-mix", seq_len=128, n_tokens=2**20)
    train, test = cache.split()
    for x_BLD in train.sequence_batches(32):   # whole sequences: a temporal SAE sees neighbours
        ...
    for x_BD in train.token_batches(4096):     # tokens shuffled: per-token SAEs
        ...

Packing: each document is tokenized alone and cut into chunks of `seq_len` tokens (a short
tail is dropped), each chunk becomes one row `BOS + seq_len tokens`; the model reads the BOS,
the cache does not store it (its residual norm is 10-30x the others).

Cache entry (a folder under cache_dir("activations")), written atomically, keyed by model,
layer, corpus (+ its fingerprint), seq_len and n_tokens:
    acts.bin     raw bf16 [n_seq, seq_len, d_model], memory-mapped on load
    tokens.bin   raw int32 [n_seq, seq_len]: token t+1 follows token t within a row
    meta.json    key fields, shapes, mean squared norm, sha256 of both files
An entry whose sizes or checksums disagree with meta.json is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from saelab import data
from saelab.cache import (
    SaelabError,
    atomic_dir,
    cache_dir,
    cache_root,
    file_lock,
    read_json,
    sha256_file,
    stable_key,
    write_json,
)
from saelab.models import LanguageModel, load_model

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the on-disk layout changes, so old entries are rebuilt
ACTS_DTYPE = torch.bfloat16
TOKENS_DTYPE = torch.int32  # vocabularies here are < 2**31
_TOKENIZE_DOCS = 256  # documents per tokenizer call: the fast tokenizer batches internally


@dataclass
class ActivationCache:
    """Activations [n_seq, seq_len, D] (bf16, BOS dropped) with their tokens and metadata."""

    path: Path
    acts: Tensor  # (n_seq, seq_len, d_model) bf16, memory-mapped
    tokens: Tensor  # (n_seq, seq_len) int32
    meta: dict

    @property
    def n_seq(self) -> int:
        return self.acts.shape[0]

    @property
    def seq_len(self) -> int:
        return self.acts.shape[1]

    @property
    def d_model(self) -> int:
        return self.acts.shape[2]

    @property
    def n_tokens(self) -> int:
        return self.n_seq * self.seq_len

    @property
    def norm_scale(self) -> float:
        """Multiply raw activations by this to get unit mean squared norm (divide to undo)."""
        return 1.0 / math.sqrt(self.meta["mean_sq_norm"])

    def split(self, test_fraction: float = 0.05) -> tuple[ActivationCache, ActivationCache]:
        """(train, test) by whole sequences: the last ceil(fraction * n_seq) rows are the test.

        A contiguous tail, not a random sample: neighbouring rows can be chunks of the same
        document, so this keeps at most one document on both sides. The normalization factor
        stays the whole cache's, so train and test are scaled alike.
        """
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        n_test = math.ceil(test_fraction * self.n_seq)
        if n_test >= self.n_seq:
            raise ValueError(
                f"cannot split {self.n_seq} sequences with test_fraction={test_fraction}: "
                "harvest more tokens or lower the fraction"
            )
        cut = self.n_seq - n_test
        return self._rows(slice(0, cut), "train"), self._rows(slice(cut, None), "test")

    def _rows(self, rows: slice, name: str) -> ActivationCache:
        meta = {**self.meta, "split": name, "n_seq": len(range(self.n_seq)[rows])}
        return replace(self, acts=self.acts[rows], tokens=self.tokens[rows], meta=meta)

    def sequence_batches(
        self,
        batch_size: int,
        seed: int = 0,
        normalize: bool = True,
        device: str | torch.device = "cpu",
        epochs: int = 1,
    ) -> Iterator[Tensor]:
        """Batches (B, seq_len, D) float32 of whole sequences, rows shuffled, token order kept.

        The last batch of an epoch may be smaller: it is kept, so a cache smaller than one
        batch still yields data (never zero training steps).
        """
        for order in self._orders(self.n_seq, batch_size, seed, epochs):
            for idx in order.split(batch_size):
                yield self._prepare(self.acts[idx], normalize, device)

    def token_batches(
        self,
        batch_size: int,
        seed: int = 0,
        normalize: bool = True,
        device: str | torch.device = "cpu",
        epochs: int = 1,
    ) -> Iterator[Tensor]:
        """Batches (B, D) float32 of single tokens, shuffled across all sequences."""
        flat = self.acts.reshape(-1, self.d_model)  # a view: the cache is contiguous
        for order in self._orders(flat.shape[0], batch_size, seed, epochs):
            for idx in order.split(batch_size):
                yield self._prepare(flat[idx], normalize, device)

    @staticmethod
    def _orders(n: int, batch_size: int, seed: int, epochs: int) -> Iterator[Tensor]:
        if batch_size < 1 or epochs < 1:
            raise ValueError(f"batch_size and epochs must be >= 1, got {batch_size}, {epochs}")
        for epoch in range(epochs):
            # A fresh generator per epoch: epoch e is the same whatever was consumed before.
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            yield torch.randperm(n, generator=gen)

    def _prepare(self, x: Tensor, normalize: bool, device: str | torch.device) -> Tensor:
        x = x.to(device=device, dtype=torch.float32)
        return x * self.norm_scale if normalize else x


def pack_sequences(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], seq_len: int, n_seq: int
) -> Tensor:
    """The first `n_seq` chunks (n_seq, seq_len) of whole-document tokens, in corpus order.

    Each document is cut into `seq_len`-token chunks; its short tail is dropped, so a chunk
    never spans two documents. BOS is not included (the harvester adds it).
    """
    rows: list[Tensor] = []
    for start in range(0, len(texts), _TOKENIZE_DOCS):
        batch = texts[start : start + _TOKENIZE_DOCS]
        for ids in tokenizer(batch, add_special_tokens=False).input_ids:
            n_full = len(ids) // seq_len
            if n_full:
                chunks = torch.tensor(ids[: n_full * seq_len], dtype=TOKENS_DTYPE)
                rows.extend(chunks.view(n_full, seq_len))
            if len(rows) >= n_seq:
                return torch.stack(rows[:n_seq])
    raise SaelabError(
        f"the corpus holds only {len(rows)} full sequences of {seq_len} tokens, "
        f"{n_seq} are needed: lower n_tokens or seq_len, or use a larger corpus"
    )


def harvest(
    model: LanguageModel | str,
    layer: int,
    corpus: str | list[str],
    seq_len: int,
    n_tokens: int,
    batch_size: int = 16,
    progress: bool = True,
    verify: bool = True,
    rebuild: bool = False,
) -> ActivationCache:
    """Activations of `model` after block `layer` on `corpus`, from the cache or harvested now.

    corpus: a saelab.data corpus name (e.g. "offline-mix") or a list of document texts.
    n_tokens: rounded up to whole sequences of `seq_len` tokens (BOS excluded).
    verify: check both files' sha256 on a cache hit (~1 s per GB); sizes are always checked.
    rebuild: harvest again even if a valid entry exists (benchmarks, suspected bad data).
    """
    lm = load_model(model) if isinstance(model, str) else model
    lm.check_layer(layer)
    if seq_len < 1 or n_tokens < 1 or batch_size < 1:
        raise ValueError(
            f"seq_len, n_tokens, batch_size must be >= 1: {seq_len, n_tokens, batch_size}"
        )
    corpus_name, fingerprint = _corpus_identity(corpus)
    n_seq = math.ceil(n_tokens / seq_len)
    key = {
        "format": FORMAT_VERSION,
        "model": lm.name,
        "layer": layer,
        "corpus": corpus_name,
        "corpus_fingerprint": fingerprint,
        "seq_len": seq_len,
        "n_seq": n_seq,
    }
    folder = entry_dir(key)
    with file_lock(folder):
        cached = None if rebuild else _load_valid(folder, key, verify)
        if cached is not None:
            log.info("reusing activation cache %s", folder)
            return cached
        texts = data.load_corpus(corpus) if isinstance(corpus, str) else corpus
        tokens = pack_sequences(lm.tokenizer, texts, seq_len, n_seq)
        meta = {**key, "n_tokens": n_seq * seq_len, "n_tokens_requested": n_tokens}
        atomic_dir(
            folder, lambda tmp: _write_entry(tmp, lm, layer, tokens, meta, batch_size, progress)
        )
        return _load_valid(folder, key, verify=False)


def entry_dir(key: dict) -> Path:
    """The cache folder for a key: readable fields first, then a hash of all of them."""
    readable = _readable(key["model"], key["corpus"], key["layer"], key["seq_len"], key["n_seq"])
    return cache_dir("activations") / f"{readable}_{stable_key(key)}"


def _readable(model: str, corpus: str, layer: int, seq_len: int, n_seq: int) -> str:
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", f"{model}_{corpus}")
    return f"{slug}_L{layer}_s{seq_len}_n{n_seq * seq_len}"


def is_cached(model_name: str, layer: int, corpus: str, seq_len: int, n_tokens: int) -> bool:
    """Whether a finished entry with these settings exists, from any build of the corpus: what
    a disk-space estimate can know before the corpus (part of the exact key) is built."""
    readable = _readable(model_name, corpus, layer, seq_len, math.ceil(n_tokens / seq_len))
    return any((cache_root() / "activations").glob(f"{readable}_*/meta.json"))


def _corpus_identity(corpus: str | list[str]) -> tuple[str, str]:
    if isinstance(corpus, str):
        return corpus, data.corpus_fingerprint(corpus)
    if not corpus or not all(isinstance(t, str) for t in corpus):
        raise ValueError("corpus must be a corpus name or a non-empty list of texts")
    digest = hashlib.sha256()
    for text in corpus:
        digest.update(hashlib.sha256(text.encode()).digest())
    fingerprint = digest.hexdigest()
    return f"texts-{fingerprint[:12]}", fingerprint


def _write_entry(
    folder: Path,
    lm: LanguageModel,
    layer: int,
    tokens: Tensor,
    meta: dict,
    batch_size: int,
    progress: bool,
) -> None:
    """Run the truncated model over `tokens`, streaming acts to disk and hashing as it goes."""
    n_seq, seq_len = tokens.shape
    acts_hash, sq_norm_sum = hashlib.sha256(), 0.0
    bos = torch.full((1, 1), lm.bos_token_id, dtype=torch.long)
    with open(folder / "acts.bin", "wb") as out, _progress_bar(progress) as bar:
        task = bar.add_task(f"harvest {lm.name} L{layer}", total=n_seq * seq_len)
        for rows in tokens.split(batch_size):
            ids = torch.cat([bos.expand(len(rows), 1), rows.long()], dim=1)
            resid = lm.residuals(ids, torch.ones_like(ids), layer)[:, 1:]  # drop BOS
            chunk = resid.to(device="cpu", dtype=ACTS_DTYPE).contiguous()
            sq_norm_sum += chunk.float().pow(2).sum().item()
            raw = chunk.view(torch.uint8).numpy()
            out.write(raw)
            acts_hash.update(raw)
            bar.advance(task, rows.numel())
    tokens_raw = tokens.contiguous().view(torch.uint8).numpy()
    (folder / "tokens.bin").write_bytes(tokens_raw.tobytes())
    meta = {
        **meta,
        "d_model": lm.d_model,
        "dtype": str(ACTS_DTYPE).removeprefix("torch."),
        "mean_sq_norm": sq_norm_sum / (n_seq * seq_len),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "sha256": {
            "acts.bin": acts_hash.hexdigest(),
            "tokens.bin": hashlib.sha256(tokens_raw).hexdigest(),
        },
    }
    write_json(folder / "meta.json", meta)


class _TokenRateColumn(ProgressColumn):
    """Tokens per second, from rich's own smoothed speed estimate."""

    def render(self, task: Task) -> Text:
        return Text(
            f"{task.speed:,.0f} tok/s" if task.speed else "- tok/s", style="progress.data.speed"
        )


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _TokenRateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def _load_valid(folder: Path, key: dict, verify: bool) -> ActivationCache | None:
    """The entry in `folder` if it is complete and matches `key`, else None (logged)."""
    meta = read_json(folder / "meta.json")
    if meta is None:
        return None
    if any(meta.get(k) != v for k, v in key.items()):
        log.warning("activation cache %s does not match its key; rebuilding", folder)
        return None
    n_seq, seq_len, d_model = meta["n_seq"], meta["seq_len"], meta["d_model"]
    expected = {
        "acts.bin": n_seq * seq_len * d_model * ACTS_DTYPE.itemsize,
        "tokens.bin": n_seq * seq_len * TOKENS_DTYPE.itemsize,
    }
    for name, size in expected.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            log.warning("activation cache %s: %s is missing or truncated; rebuilding", folder, name)
            return None
        if verify and sha256_file(path) != meta["sha256"][name]:
            log.warning("activation cache %s: %s fails its checksum; rebuilding", folder, name)
            return None
    acts = torch.from_file(
        str(folder / "acts.bin"), size=n_seq * seq_len * d_model, dtype=ACTS_DTYPE
    )
    tokens = torch.from_file(str(folder / "tokens.bin"), size=n_seq * seq_len, dtype=TOKENS_DTYPE)
    return ActivationCache(
        path=folder,
        acts=acts.view(n_seq, seq_len, d_model),
        tokens=tokens.view(n_seq, seq_len),
        meta=meta,
    )
