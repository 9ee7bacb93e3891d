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

The lab's caches (what experiments train on and the referee measures on) are stored split, in
two entries of the same layout keyed also by test_fraction: the training rows under the cache
root, the held-out tail under the sealed root (saelab.cache), so agent code can be given the
first and not the second. Both keep the whole cache's mean squared norm, and their rows are
byte for byte those of the unsplit entry (same batches through the model), so a split cache
measures exactly what `harvest(...).split(f)` gave:

    train = train_split(model, 6, "offline-mix", 128, 300_000, 0.05)   # experiments
    test = held_out_split(model, 6, "offline-mix", 128, 300_000, 0.05)     # the referee only
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import shutil
from collections.abc import Callable, Iterator
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
    SealedError,
    atomic_dir,
    cache_dir,
    cache_root,
    file_lock,
    read_json,
    sealed_dir,
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
FILES = ("acts.bin", "tokens.bin")


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
        cut = self.n_seq - _n_test(self.n_seq, test_fraction)
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
    key = _key(lm, layer, corpus, seq_len, n_tokens, batch_size)
    folder = entry_dir(key)
    with file_lock(folder):
        cached = None if rebuild else _load_valid(folder, key, verify)
        if cached is not None:
            log.info("reusing activation cache %s", folder)
            return cached
        tokens = _tokens(lm, corpus, seq_len, key["n_seq"])
        meta = {**key, "n_tokens": tokens.numel(), "n_tokens_requested": n_tokens}
        atomic_dir(
            folder, lambda tmp: _write_entry(tmp, lm, layer, tokens, meta, batch_size, progress)
        )
        return _load_valid(folder, key, verify=False)


def harvest_split(
    model: LanguageModel | str,
    layer: int,
    corpus: str | list[str],
    seq_len: int,
    n_tokens: int,
    test_fraction: float,
    batch_size: int = 16,
    progress: bool = True,
    verify: bool = True,
) -> tuple[ActivationCache, ActivationCache]:
    """(train, test) of `harvest(...).split(test_fraction)`, stored split (module docstring):
    found, cut from an unsplit entry of the same key (which is then removed: it holds the
    held-out rows where agent code reads), or harvested now. What saelab.prepare builds."""
    lm = load_model(model) if isinstance(model, str) else model
    key = _key(lm, layer, corpus, seq_len, n_tokens, batch_size)
    n_test = _n_test(key["n_seq"], test_fraction)
    found = _load_split(key, test_fraction, verify)  # no lock first: readers may not write
    if found is not None:
        return found
    folders = split_dirs(key, test_fraction)
    with file_lock(folders[0]):
        found = _load_split(key, test_fraction, verify)
        if found is not None:
            return found
        meta = {**_split_key(key, test_fraction, "train"), "n_tokens_requested": n_tokens}
        unsplit = _load_valid(entry_dir(key), key, verify)
        if unsplit is not None:  # an entry from before the split: cut it, no model forward
            fill = _cut(unsplit, n_test)
            _store_split(folders, meta, unsplit.tokens, n_test, unsplit.d_model, fill)
            shutil.rmtree(unsplit.path)
        else:
            tokens = _tokens(lm, corpus, seq_len, key["n_seq"])
            fill = _harvested(lm, layer, tokens, n_test, batch_size, progress)
            _store_split(folders, meta, tokens, n_test, lm.d_model, fill)
        return _load_split(key, test_fraction, verify=False)


def train_split(
    model: LanguageModel | str,
    layer: int,
    corpus: str | list[str],
    seq_len: int,
    n_tokens: int,
    test_fraction: float,
    verify: bool = True,
) -> ActivationCache:
    """The training rows of the lab's split cache, read from the training tree alone (never the
    sealed one): what an experiment trains on. Built (both parts) when missing and the lab's
    trees are writable; otherwise one line naming saelab.prepare."""
    lm = load_model(model) if isinstance(model, str) else model
    key = _key(lm, layer, corpus, seq_len, n_tokens)
    folder = cache_dir("activations") / _split_name(key, test_fraction)  # never the sealed tree
    train = _load_valid(folder, _split_key(key, test_fraction, "train"), verify=False)
    if train is not None and (not verify or _verified(train)):
        return train
    try:
        return harvest_split(lm, layer, corpus, seq_len, n_tokens, test_fraction)[0]
    except SealedError as error:
        raise SaelabError(
            f"no activation cache for {lm.name} layer {layer}, {key['corpus']}, seq_len {seq_len}, "
            f"{n_tokens:,} tokens, test_fraction {test_fraction}: the lab builds its caches "
            "before any run (python -m saelab.prepare); train on the profile's settings"
        ) from error


def held_out_split(
    model: LanguageModel | str, *settings: int | str | float, verify: bool = True
) -> ActivationCache:
    """The held-out rows of the lab's split cache, from the sealed tree: the referee's. The
    settings are train_split's (layer, corpus, seq_len, n_tokens, test_fraction)."""
    return harvest_split(model, *settings, verify=verify)[1]


def split_dirs(key: dict, test_fraction: float) -> tuple[Path, Path]:
    """(training-tree folder, sealed-tree folder) of the split entry for an unsplit key."""
    name = _split_name(key, test_fraction)
    return cache_dir("activations") / name, sealed_dir("activations") / name


def _split_name(key: dict, test_fraction: float) -> str:
    readable = _readable(key["model"], key["corpus"], key["layer"], key["seq_len"], key["n_seq"])
    return f"{readable}_heldout{test_fraction:g}_{stable_key(_split_key(key, test_fraction, ''))}"


def _key(
    lm: LanguageModel,
    layer: int,
    corpus: str | list[str],
    seq_len: int,
    n_tokens: int,
    batch_size: int = 1,
) -> dict:
    """The unsplit entry's key; ValueError on a bad size."""
    lm.check_layer(layer)
    if seq_len < 1 or n_tokens < 1 or batch_size < 1:
        raise ValueError(
            f"seq_len, n_tokens, batch_size must be >= 1: {seq_len, n_tokens, batch_size}"
        )
    corpus_name, fingerprint = _corpus_identity(corpus)
    return {
        "format": FORMAT_VERSION,
        "model": lm.name,
        "layer": layer,
        "corpus": corpus_name,
        "corpus_fingerprint": fingerprint,
        "seq_len": seq_len,
        "n_seq": math.ceil(n_tokens / seq_len),
    }


def _split_key(key: dict, test_fraction: float, part: str) -> dict:
    # "n_seq" in a part's meta counts its own rows; the whole cache's count is cache_n_seq
    fields = {k: v for k, v in key.items() if k != "n_seq"}
    return {**fields, "cache_n_seq": key["n_seq"], "test_fraction": test_fraction, "split": part}


def _n_test(n_seq: int, test_fraction: float) -> int:
    """Held-out rows: the rule of ActivationCache.split."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = math.ceil(test_fraction * n_seq)
    if n_test >= n_seq:
        raise ValueError(
            f"cannot split {n_seq} sequences with test_fraction={test_fraction}: "
            "harvest more tokens or lower the fraction"
        )
    return n_test


def _tokens(lm: LanguageModel, corpus: str | list[str], seq_len: int, n_seq: int) -> Tensor:
    texts = data.load_corpus(corpus) if isinstance(corpus, str) else corpus
    return pack_sequences(lm.tokenizer, texts, seq_len, n_seq)


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
    (acts_sha,), mean_sq_norm = _write_parts([folder], lm, layer, tokens, 0, batch_size, progress)
    _write_meta(folder, meta, tokens, acts_sha, lm.d_model, mean_sq_norm)


def _write_parts(
    folders: list[Path],
    lm: LanguageModel,
    layer: int,
    tokens: Tensor,
    n_test: int,
    batch_size: int,
    progress: bool,
) -> tuple[list[str], float]:
    """Stream the residuals of `tokens` in one pass, the first rows to folders[0]/acts.bin and
    the last `n_test` to folders[1]/acts.bin (one folder: n_test 0). The batches and the sum
    of squares are those of an unsplit harvest, so the bytes and the norm are too. Returns
    each part's acts sha256 and the mean squared norm over all rows."""
    n_seq, seq_len = tokens.shape
    cuts = [0, n_seq - n_test, n_seq][: len(folders) + 1]
    hashes, sq_norm_sum = [hashlib.sha256() for _ in folders], 0.0
    bos = torch.full((1, 1), lm.bos_token_id, dtype=torch.long)
    outs = [open(folder / "acts.bin", "wb") for folder in folders]  # noqa: SIM115 - closed below
    try:
        with _progress_bar(progress) as bar:
            task = bar.add_task(f"harvest {lm.name} L{layer}", total=n_seq * seq_len)
            for start in range(0, n_seq, batch_size):
                rows = tokens[start : start + batch_size]
                ids = torch.cat([bos.expand(len(rows), 1), rows.long()], dim=1)
                resid = lm.residuals(ids, torch.ones_like(ids), layer)[:, 1:]  # drop BOS
                chunk = resid.to(device="cpu", dtype=ACTS_DTYPE).contiguous()
                sq_norm_sum += chunk.float().pow(2).sum().item()
                for part, out in enumerate(outs):
                    lo, hi = (max(c - start, 0) for c in cuts[part : part + 2])
                    raw = chunk[lo:hi].contiguous().view(torch.uint8).numpy()
                    out.write(raw)
                    hashes[part].update(raw)
                bar.advance(task, rows.numel())
    finally:
        for out in outs:
            out.close()
    return [h.hexdigest() for h in hashes], sq_norm_sum / tokens.numel()


def _write_meta(
    folder: Path, meta: dict, tokens: Tensor, acts_sha: str, d_model: int, mean_sq_norm: float
) -> None:
    tokens_raw = tokens.contiguous().view(torch.uint8).numpy()
    (folder / "tokens.bin").write_bytes(tokens_raw.tobytes())
    meta = {
        **meta,
        "n_seq": tokens.shape[0],
        "d_model": d_model,
        "dtype": str(ACTS_DTYPE).removeprefix("torch."),
        "mean_sq_norm": mean_sq_norm,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "sha256": {
            "acts.bin": acts_sha,
            "tokens.bin": hashlib.sha256(tokens_raw).hexdigest(),
        },
    }
    write_json(folder / "meta.json", meta)


def _store_split(
    folders: tuple[Path, Path],
    meta: dict,
    tokens: Tensor,
    n_test: int,
    d_model: int,
    fill: Callable[[list[Path]], tuple[list[str], float]],
) -> None:
    """Write both parts of a split entry: `fill` writes acts.bin into each part's temporary
    folder and returns their sha256s and the whole cache's mean squared norm; the held-out
    part is renamed in last, so a crash in between leaves no complete split (rebuilt)."""

    def both(test_tmp: Path) -> None:
        def train(train_tmp: Path) -> None:
            shas, mean_sq_norm = fill([train_tmp, test_tmp])
            cut = tokens.shape[0] - n_test
            parts = zip(
                (train_tmp, test_tmp),
                (tokens[:cut], tokens[cut:]),
                shas,
                ("train", "test"),
                strict=True,
            )
            for tmp, rows, sha, part in parts:
                part_meta = {**meta, "split": part, "n_tokens": rows.numel()}
                _write_meta(tmp, part_meta, rows, sha, d_model, mean_sq_norm)

        atomic_dir(folders[0], train)

    atomic_dir(folders[1], both)


def _harvested(lm, layer, tokens, n_test, batch_size, progress):  # noqa: ANN001, ANN202
    """A `fill` for _store_split that runs the model (see _write_parts)."""
    return lambda dirs: _write_parts(dirs, lm, layer, tokens, n_test, batch_size, progress)


def _cut(unsplit: ActivationCache, n_test: int):  # noqa: ANN202
    """A `fill` for _store_split that copies an unsplit entry's rows and keeps its norm."""

    def fill(dirs: list[Path]) -> tuple[list[str], float]:
        cut, shas = unsplit.n_seq - n_test, []
        for folder, rows in zip(dirs, (slice(0, cut), slice(cut, None)), strict=True):
            raw = unsplit.acts[rows].contiguous().view(torch.uint8).numpy()
            (folder / "acts.bin").write_bytes(raw.tobytes())
            shas.append(hashlib.sha256(raw).hexdigest())
        return shas, unsplit.meta["mean_sq_norm"]

    return fill


def _load_split(
    key: dict, test_fraction: float, verify: bool
) -> tuple[ActivationCache, ActivationCache] | None:
    folders = split_dirs(key, test_fraction)
    parts = [
        _load_valid(folder, _split_key(key, test_fraction, part), verify)
        for folder, part in zip(folders, ("train", "test"), strict=True)
    ]
    return None if None in parts else (parts[0], parts[1])


def _verified(cache: ActivationCache) -> bool:
    return all(sha256_file(cache.path / name) == cache.meta["sha256"][name] for name in FILES)


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
