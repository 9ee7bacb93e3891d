"""Append-only `journal.jsonl` in the workspace: the record that resume, replay and the report
read. One JSON object a line, each written, flushed and fsynced before `append` returns, so a
kill -9 loses at most the line being written; a torn last line is skipped with a warning.

Every entry has "kind", "seq" (0, 1, 2, ... in file order) and "ts" (UTC ISO 8601). The kinds the
loop writes, with their fields:
    start     idea, template, model, max_runs, max_iters (and any other launch settings)
    llm_call  model, messages, response, prompt_tokens, completion_tokens, cost
    prompt    text, run_name (the run the prompt is about; may be absent)
    response  text (the agent's whole reply, analysis included), run_name
    commit    sha, message, files, stats (path -> [lines added, lines deleted])
    revert    files, why
    run       run_name, attempt, returncode, timed_out, seconds, redacted (secrets scrubbed
              from its output before the log, a prompt or this journal saw it)
    setup     seconds, sandbox_missing (protections this machine lacks), network, code (digest)
    verdict   run_name, ok, problems, metrics, sources (metric -> measured | reported),
              artifact (the referee's digest), files (run-dir path -> sha256), commit,
              referee_seconds (the lab's measurement, wall time; None without a referee)
    run_done  run_name, status ("ok" | "invalid" | "crashed" | "timeout")
    end       reason
    skip      run_name, attempt, next_prompt (an agent turn that changed nothing)
    halt      error, reason (the LLM provider refused, or the workspace passed its disk cap;
              resume goes on)
    confirm   run_name, commit, seeds, reason (why the agent's runs ended); absent when no run
              is confirmed (confirmation off, no seed_arg, no VALID run)
    confirm_run      run_name (the seed's directory), of, seed, returncode, timed_out, seconds,
                     redacted
    confirm_verdict  as verdict, plus of and seed
    confirm_done     run_name, of, seed, status (as run_done; a seed is never retried)
    compare   cis (key metric -> [low, high]: the lab's paired per-item CI, when it has one)
One attempt of a run is journalled as "run", then "verdict" (absent after a crash or timeout),
then "run_done", which closes it; the report relies on that order.

This module is the one reader: everyone else asks it named questions (turns, attempts, passed
runs, usage, phases) and never reads an entry's kind or parses its timestamp.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# the kinds that move the loop's state machine, in the order one turn writes them
STEP_KINDS = ("start", "prompt", "response", "commit", "run", "verdict", "run_done", "skip")
STEP_KINDS += ("confirm",)  # the agent's runs ended; confirmation seeds follow


def stamp(entry: dict) -> datetime:
    """When an entry was written."""
    return datetime.fromisoformat(entry["ts"])


@dataclass(frozen=True)
class Usage:
    """LLM calls and what they cost."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @staticmethod
    def of(calls: list[dict]) -> Usage:
        return Usage(
            len(calls),
            sum(c.get("prompt_tokens") or 0 for c in calls),
            sum(c.get("completion_tokens") or 0 for c in calls),
            sum(c.get("cost") or 0.0 for c in calls),
        )


@dataclass
class Turn:
    """One agent turn: its prompt, the LLM calls it made and its reply (None: cut off)."""

    prompt: dict
    response: dict | None = None
    calls: list[dict] = field(default_factory=list)

    @property
    def run_name(self) -> str:
        return str(self.prompt.get("run_name", ""))

    @property
    def usage(self) -> Usage:
        return Usage.of(self.calls)

    @property
    def seconds(self) -> float:
        """From the prompt to the reply (0 for a turn cut off)."""
        if self.response is None:
            return 0.0
        return (stamp(self.response) - stamp(self.prompt)).total_seconds()


@dataclass
class Attempt:
    """One finished attempt of a run: its run_done entry, the run and verdict entries before it,
    and the agent's reply that followed it (its analysis)."""

    done: dict
    run: dict | None
    verdict: dict | None
    response: dict | None
    replaced: bool  # a later attempt of the same run name exists
    commit: dict | None = None  # the commit entry of the code that ran
    next_commit: dict | None = None  # the commit of the edits in `response`

    @property
    def run_name(self) -> str:
        return self.done["run_name"]

    @property
    def status(self) -> str:
        return self.done.get("status", "invalid")


@dataclass
class Confirmation:
    """The confirmation of the best run: its plan (a "confirm" entry) and what ran since."""

    plan: dict
    done: list[dict]  # confirm_done entries, in order
    verdicts: list[dict]  # the last VALID confirm_verdict of each seed that passed
    cis: dict[str, list[float]]  # the lab's paired CIs, once computed

    @property
    def run_name(self) -> str | None:
        return self.plan.get("run_name")

    @property
    def seeds_done(self) -> list[int]:
        """Seeds whose run passed."""
        return [e["seed"] for e in self.done if e.get("status") == "ok"]

    @property
    def pending(self) -> list[int]:
        """Planned seeds with no confirm_done yet (a kill mid-run redoes that seed)."""
        finished = {e["seed"] for e in self.done}
        return [s for s in self.plan.get("seeds") or [] if s not in finished]

    @property
    def failed(self) -> list[int]:
        return [e["seed"] for e in self.done if e.get("status") != "ok"]


class Journal:
    def __init__(self, path: Path, read_only: bool = False):
        """`read_only`: never touch the file (a replayed journal may be someone else's)."""
        self.path = Path(path)
        self.read_only = read_only
        self._seq = None if read_only else self._next_seq()

    def append(self, kind: str, **fields: Any) -> dict:
        """Write one entry durably and return it (with its kind, seq and ts)."""
        if self._seq is None:
            raise ValueError(f"{self.path} was opened read-only")
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

    # ---- plain reads ---------------------------------------------------------------------

    def entries(self, kind: str | None = None) -> list[dict]:
        """All readable entries in order, optionally of one kind."""
        return [e for e in self._read() if kind is None or e.get("kind") == kind]

    def last(self, kind: str) -> dict | None:
        found = self.entries(kind)
        return found[-1] if found else None

    @property
    def started(self) -> dict | None:
        return self.last("start")

    @property
    def ended(self) -> dict | None:
        return self.last("end")

    def since(self, when: datetime) -> list[dict]:
        """The entries written at or after `when`."""
        return [e for e in self.entries() if stamp(e) >= when]

    def last_step(self) -> tuple[str, dict]:
        """(kind, entry) of the last entry that moves the loop's state machine (STEP_KINDS);
        ("start", {}) before the first."""
        steps = [e for e in self.entries() if e.get("kind") in STEP_KINDS]
        return (steps[-1]["kind"], steps[-1]) if steps else ("start", {})

    # ---- named queries -------------------------------------------------------------------

    def turns(self, since: datetime | None = None) -> list[Turn]:
        """Every agent turn in order (written at or after `since`, when given)."""
        turns: list[Turn] = []
        entries = self.entries() if since is None else self.since(since)
        for entry in entries:
            kind = entry.get("kind")
            if kind == "prompt":
                turns.append(Turn(entry))
            elif turns and turns[-1].response is None and kind == "llm_call":
                turns[-1].calls.append(entry)
            elif turns and turns[-1].response is None and kind == "response":
                turns[-1].response = entry
        return turns

    def history(self) -> list[tuple[str, str]]:
        """(prompt, reply) of every finished turn, to restore the agent's chat on resume."""
        return [(t.prompt["text"], t.response["text"]) for t in self.turns() if t.response]

    def replies_served(self) -> list[str]:
        """The LLM's replies in the turns that finished, in order: what a replay serves. A
        turn cut off by a crash was asked again after --resume; its calls would shift the rest."""
        return [
            str(call.get("response", "")) for t in self.turns() if t.response for call in t.calls
        ]

    def usage(self) -> Usage:
        """All recorded LLM calls."""
        return Usage.of(self.entries("llm_call"))

    def attempts(self) -> list[Attempt]:
        """Every finished attempt of a run, in order (see Attempt)."""
        entries = self.entries()
        done = [e for e in entries if e.get("kind") == "run_done"]
        latest = {e["run_name"]: e["seq"] for e in done}
        attempts = []
        for i, entry in enumerate(done):
            start = done[i - 1]["seq"] if i else -1
            end = done[i + 1]["seq"] if i + 1 < len(done) else math.inf
            during = [e for e in entries if start < e["seq"] < entry["seq"]]
            after = [e for e in entries if entry["seq"] < e["seq"] < end]
            attempts.append(
                Attempt(
                    entry,
                    _last(during, "run", entry["run_name"]),
                    _last(during, "verdict", entry["run_name"]),
                    _last(after, "response"),
                    latest[entry["run_name"]] != entry["seq"],
                    _last(during, "commit"),
                    _last(after, "commit"),
                )
            )
        return attempts

    def commit_before(self, seq: int) -> dict | None:
        """The last commit entry (sha, message, files) written before entry `seq`: the code
        an attempt whose run entry is `seq` ran."""
        found = [e for e in self.entries("commit") if e["seq"] < seq]
        return found[-1] if found else None

    def passed_runs(self) -> list[str]:
        """Names of the runs whose attempt passed, in order."""
        return [e["run_name"] for e in self.entries("run_done") if e.get("status") == "ok"]

    def failed_attempts(self) -> int:
        """Attempts that crashed, timed out or failed validation."""
        return sum(e.get("status") != "ok" for e in self.entries("run_done"))

    def failures_of(self, run_name: str) -> int:
        """Tries of `run_name` that did not pass: failed attempts and turns that changed nothing."""
        return sum(
            e.get("run_name") == run_name
            and (e["kind"] == "skip" or (e["kind"] == "run_done" and e.get("status") != "ok"))
            for e in self.entries()
        )

    def valid_verdicts(self) -> list[dict]:
        """The verdicts of runs judged VALID, in order."""
        return [e for e in self.entries("verdict") if e.get("ok")]

    def run_seconds(self, since: datetime) -> list[float]:
        """Seconds of each run attempt (confirmation seeds included) that began at or after
        `since`."""
        runs = ("run", "confirm_run")
        return [e["seconds"] for e in self.since(since) if e.get("kind") in runs]

    def confirmation(self) -> Confirmation | None:
        """The confirmation step, once the agent's runs have ended (None before)."""
        plan = self.last("confirm")
        if plan is None:
            return None
        after = [e for e in self.entries() if e["seq"] > plan["seq"]]
        done = [e for e in after if e.get("kind") == "confirm_done"]
        passed = {e["seed"] for e in done if e.get("status") == "ok"}
        verdicts = {
            e["seed"]: e
            for e in after
            if e.get("kind") == "confirm_verdict" and e.get("ok") and e.get("seed") in passed
        }
        compare = _last(after, "compare")
        cis = dict(compare.get("cis") or {}) if compare else {}
        return Confirmation(plan, done, [verdicts[s] for s in sorted(verdicts)], cis)

    def referee_seconds(self, since: datetime) -> list[float]:
        """Seconds the lab's referee took for each verdict (a confirmation seed's included)
        written at or after `since`."""
        verdicts = ("verdict", "confirm_verdict")
        found = [e.get("referee_seconds") for e in self.since(since) if e.get("kind") in verdicts]
        return [seconds for seconds in found if isinstance(seconds, int | float)]

    def span(self) -> tuple[datetime, datetime] | None:
        """When the first and the last entry were written (None for an empty journal)."""
        entries = self.entries()
        return (stamp(entries[0]), stamp(entries[-1])) if entries else None

    def wall_seconds(self) -> float:
        """From the first entry to the last (nan for an empty journal)."""
        span = self.span()
        return (span[1] - span[0]).total_seconds() if span else math.nan

    def loop_seconds(self) -> float:
        """From the loop's start to its end (nan until it has ended)."""
        start, end = self.started, self.ended
        return (stamp(end) - stamp(start)).total_seconds() if start and end else math.nan

    # ---- the file ------------------------------------------------------------------------

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
                if not self.read_only:
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


def _last(entries: list[dict], kind: str, run_name: str | None = None) -> dict | None:
    for entry in reversed(entries):
        if entry.get("kind") == kind and run_name in (None, entry.get("run_name")):
            return entry
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
