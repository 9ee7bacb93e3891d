"""Where the lab keeps model weights, corpora and activations, and how it writes them safely.

Two trees, disjoint so a sandbox's read allow-list is one path each:
    cache_root()   $SAELAB_CACHE or ~/.cache/saelab: the TRAINING tree agent code may read (model
                   weights, training corpora, the training rows of the activation cache)
    sealed_root()  $SAELAB_SEALED or the cache root's sibling `<root>-sealed` (~/.cache/saelab-
                   sealed): the referee's evaluation data (held-out rows, eval sets and their
                   sources, the eval cache); only `saelab.prepare` and the referee read it

Every cache entry is built by at most one process at a time (`file_lock`), written to a
temporary name and renamed into place (`atomic_write`, `atomic_dir`), so a crash or a second
process never leaves a half-written file under the final name. Readers still verify what they
load (`sha256_file`, sizes in metadata): a file truncated by a full disk is rebuilt, not trusted.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENV_VAR = "SAELAB_CACHE"
SEALED_ENV_VAR = "SAELAB_SEALED"


class SaelabError(RuntimeError):
    """A problem the user can fix (bad name, missing cache, unreachable hub); one clear line."""


class SealedError(SaelabError, PermissionError):
    """Agent code reached for the lab's sealed evaluation data, which only the referee reads."""


def cache_root() -> Path:
    """The cache root: $SAELAB_CACHE, else ~/.cache/saelab (created)."""
    root = Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "saelab").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(*parts: str) -> Path:
    """A sub-directory of the cache root, e.g. cache_dir("models"); created if missing."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sealed_root() -> Path:
    """The sealed tree's root: $SAELAB_SEALED, else `<cache root>-sealed` beside the cache root
    (a sibling, not a sub-folder: a read allow-list can grant one tree and not the other)."""
    default = Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "saelab").expanduser()
    return Path(os.environ.get(SEALED_ENV_VAR) or f"{default}-sealed").expanduser()


def sealed_dir(*parts: str) -> Path:
    """A sub-directory of the sealed tree, e.g. sealed_dir("evals"); created if missing.
    SealedError in one line where it cannot be read (agent code's sandbox)."""
    path = sealed_root().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.scandir(path).close()  # Landlock refuses the listing, not the lookup
    except OSError as error:
        raise SealedError(
            f"{path} is the lab's sealed evaluation data (held-out split, eval sets), read only "
            "by the referee: train on the training split (saelab.activations.train_split) and "
            "leave measuring to the referee"
        ) from error
    return path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` so only one process builds `path`.

    Blocking: a second process waits for the first and then finds the finished entry.
    The lock file stays behind on purpose (deleting it would race with a waiting process).
    """
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _umask_mode(base: int) -> int:
    # mkstemp/mkdtemp create private (0600/0700) entries; the cache is meant to be shared.
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def atomic_write(path: Path, writer: Callable[[Path], Any]) -> Path:
    """Call `writer(tmp_path)` and rename the result to `path` only if it returned normally."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        tmp.chmod(_umask_mode(0o666))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_dir(path: Path, writer: Callable[[Path], Any]) -> Path:
    """Like `atomic_write` for a folder: `writer(tmp_dir)` fills it, then it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        writer(tmp)
        tmp.chmod(_umask_mode(0o777))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def write_json(path: Path, data: dict) -> Path:
    """Atomically write `data` as indented JSON."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None if it is missing or unreadable (treat as no cache)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large caches do not need to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def stable_key(fields: dict) -> str:
    """A short, stable hash of a dict of key fields, for cache entry names."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
