"""Append-only `journal.jsonl` in the workspace: the record that resume, replay and the report
read. One JSON object a line, each written, flushed and fsynced before `append` returns, so a
kill -9 loses at most the line being written; a torn last line is skipped with a warning.

Every entry has "kind", "seq" (0, 1, 2, ... in file order) and "ts" (UTC ISO 8601). The kinds the
loop writes, with their fields:
    start     idea, template, model, max_runs, max_iters (and any other launch settings)
    llm_call  model, messages, response, prompt_tokens, completion_tokens, cost
    prompt    text, run_name (the run the prompt is about; may be absent)
    response  text (the agent's whole reply, analysis included), run_name
    commit    sha, message, files
    revert    files, why
    run       run_name, attempt, returncode, timed_out, seconds
    setup     seconds, sandbox_missing (protections this machine lacks), network, code (digest)
    verdict   run_name, ok, problems, metrics, sources (metric -> measured | reported),
              artifact (the referee's digest), files (run-dir path -> sha256), commit
    run_done  run_name, status ("ok" | "invalid" | "crashed" | "timeout")
    end       reason
One attempt of a run is journalled as "run", then "verdict" (absent after a crash or timeout),
then "run_done", which closes it; the report relies on that order.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._seq = self._next_seq()

    def append(self, kind: str, **fields: Any) -> dict:
        """Write one entry durably and return it (with its kind, seq and ts)."""
        entry = {"kind": kind, "seq": self._seq, "ts": datetime.now(UTC).isoformat(), **fields}
        line = json.dumps(entry, default=str) + "\n"
        created = not self.path.exists()
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        if created:  # the directory entry must be durable too, or a crash can lose the file
            _fsync_dir(self.path.parent)
        self._seq += 1
        return entry

    def entries(self, kind: str | None = None) -> list[dict]:
        """All readable entries in order, optionally of one kind."""
        return [e for e in self._read() if kind is None or e.get("kind") == kind]

    def last(self, kind: str) -> dict | None:
        found = self.entries(kind)
        return found[-1] if found else None

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        entries = []
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            if not isinstance(entry, dict):
                log.warning("%s line %d is torn or corrupt; skipped", self.path, number)
                continue
            entries.append(entry)
        return entries

    def _next_seq(self) -> int:
        """Continue numbering after a resume; seal a torn last line so the next append starts
        on a fresh line instead of gluing itself to the fragment."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0
        with self.path.open("rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        seqs = [e["seq"] for e in self._read() if isinstance(e.get("seq"), int)]
        return max(seqs, default=-1) + 1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
