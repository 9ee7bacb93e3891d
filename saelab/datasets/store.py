"""Checksummed JSON artefacts: `<name>.json` beside `<name>.json.sha256`.

A reader trusts a file only when its sha256 matches the sidecar, so a truncated or edited
cache file is rebuilt rather than silently used. Writers hold the entry's lock and write
the data before the sidecar, so a crash between the two leaves a mismatch, i.e. a rebuild.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saelab.cache import atomic_write, file_lock, sha256_file

log = logging.getLogger(__name__)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verified_digest(path: Path) -> str | None:
    """The file's sha256 if it matches its sidecar, else None (missing, partial or corrupt)."""
    sidecar = _sidecar(path)
    if not path.is_file() or not sidecar.is_file():
        return None
    expected = sidecar.read_text().strip()
    actual = sha256_file(path)
    if actual != expected:
        log.warning("cache file %s fails its checksum; rebuilding it", path)
        return None
    return actual


def write_artefact(path: Path, data: Any) -> str:
    """Write `data` as compact JSON plus its sha256 sidecar; returns the digest."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, ensure_ascii=False)))
    digest = sha256_file(path)
    atomic_write(_sidecar(path), lambda tmp: tmp.write_text(digest + "\n"))
    return digest


def read_artefact(path: Path) -> Any | None:
    """The JSON in `path` if its checksum verifies, else None."""
    if verified_digest(path) is None:
        return None
    return json.loads(path.read_text())


def cached_artefact(path: Path, build: Callable[[], Any]) -> Any:
    """Load `path` if it verifies; otherwise build it once (under a lock) and store it."""
    data = read_artefact(path)
    if data is not None:
        return data
    with file_lock(path):
        data = read_artefact(path)  # another process may have built it while we waited
        if data is None:
            data = build()
            write_artefact(path, data)
    return data
