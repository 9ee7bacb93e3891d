"""The record of each run the report shows, read from the journal's verdicts.

Every number comes from the verdict the journal recorded when the run was judged (the numbers
the lab's referee measured, and the training facts the experiment reported, each tagged), never
from the LLM's prose; a run file that changed after its verdict is flagged, not re-read. The
agent's analysis is kept beside the numbers, with a flag where it claims a success that
validation refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.journal import Attempt, Journal
from orchestrator.templates import TemplateSpec
from orchestrator.trust.redact import run_files
from orchestrator.trust.validate import validate_run

LABELS = {"ok": "VALID", "invalid": "INVALID", "crashed": "CRASHED", "timeout": "TIMEOUT"}

# Success claims and the negations that cancel them; see claims_success.
CLAIM = re.compile(r"success(ful|fully)?|succeed(ed|s)?|improved|improves|worked|outperform(ed|s)?")
NEGATION = {"not", "no", "never", "without", "cannot", "nor", "neither", "unable", "hardly"}
NEGATION_PREFIX = ("fail",)  # failed, fails, failure
WORDS_BEFORE, WORDS_AFTER = 4, 2  # how near a negation must be ("was not successful")

# an aider SEARCH/REPLACE block, with the file name on the line before its fence
EDIT_BLOCK = re.compile(
    r"^(?:(?P<path>[^\s`]+)\n)?```[^\n]*\n<<<<<<< SEARCH\n(?P<search>.*?)^=======\n"
    r"(?P<replace>.*?)^>>>>>>> REPLACE\n```",
    re.DOTALL | re.MULTILINE,
)


@dataclass
class RunRecord:
    name: str
    status: str  # "ok" | "invalid" | "crashed" | "timeout"
    verdict_ok: bool
    problems: list[str]
    metrics: dict[str, Any]
    analysis: str
    claims_success_but_failed: bool
    seconds: float | None
    attempt: int | None = None
    from_journal: bool = False  # numbers as validated when it ran: its directory is gone now
    sources: dict[str, str] = field(default_factory=dict)  # metric -> "measured" | "reported"
    changed_after_verdict: list[str] = field(default_factory=list)  # run files edited since
    commit: str | None = None  # the sha of the code that ran (the workspace's git)

    @property
    def label(self) -> str:
        return LABELS.get(self.status, self.status.upper())


def claims_success(text: str) -> bool:
    """True when `text` claims success (success/succeeded/improved/worked...) in a sentence
    where no negation stands within a few words of the claim."""
    for sentence in re.split(r"[.!?;\n]+", text.lower()):
        words = re.findall(r"[a-z']+", sentence)
        for i, word in enumerate(words):
            if not CLAIM.fullmatch(word):
                continue
            near = words[max(0, i - WORDS_BEFORE) : i] + words[i + 1 : i + 1 + WORDS_AFTER]
            if not any(_negates(w) for w in near):
                return True
    return False


def _negates(word: str) -> bool:
    return word in NEGATION or word.endswith("n't") or word.startswith(NEGATION_PREFIX)


def collect_runs(workspace: Path, spec: TemplateSpec, journal: Journal) -> list[RunRecord]:
    """The baseline, then one record per finished attempt in journal order."""
    records = [_baseline_record(Path(workspace), spec)]
    return records + [_attempt_record(Path(workspace), spec, a) for a in journal.attempts()]


def _attempt_record(workspace: Path, spec: TemplateSpec, attempt: Attempt) -> RunRecord:
    """One attempt from its journal entries: its verdict, its run, and the agent's reply."""
    name, verdict, run = attempt.run_name, attempt.verdict, attempt.run or {}
    from_journal = attempt.replaced or not (workspace / name).is_dir()
    fresh = None
    if verdict is not None:  # the journal is the authority: the numbers as they were judged
        recorded = verdict.get("metrics") or {}
        metrics = {key: recorded.get(key) for key in spec.key_metrics}
        sources = verdict.get("sources") or {}
    elif from_journal:
        metrics, sources = dict.fromkeys(spec.key_metrics), {}
    else:  # crashed or timed out: whatever the directory holds, unjudged
        fresh = validate_run(workspace / name, spec)
        metrics, sources = fresh.metrics, fresh.sources
    changed = [] if from_journal or verdict is None else _changed_files(workspace / name, verdict)
    judged = verdict or {
        "ok": bool(fresh and fresh.ok),
        "problems": fresh.problems if fresh else [],
    }
    response = attempt.response
    text = str(response.get("text", "")) if response else ""
    analysis = without_edit_blocks(text, attempt.next_commit)
    return RunRecord(
        name=name,
        status=attempt.status,
        verdict_ok=bool(judged["ok"]),
        problems=list(judged["problems"]),
        metrics=metrics,
        analysis=analysis,
        claims_success_but_failed=attempt.status != "ok" and claims_success(analysis),
        seconds=run.get("seconds"),
        attempt=run.get("attempt"),
        from_journal=from_journal,
        sources=sources,
        changed_after_verdict=changed,
        commit=(verdict or {}).get("commit") or (attempt.commit or {}).get("sha"),
    )


def _changed_files(run_dir: Path, verdict: dict) -> list[str]:
    """Files of a judged run that differ from the digests its verdict recorded."""
    recorded = verdict.get("files")
    if recorded is None:  # a journal from before verdicts recorded digests
        return []
    now = run_files(run_dir)
    return sorted(p for p in {*recorded, *now} if recorded.get(p) != now.get(p))


def without_edit_blocks(text: str, commit: dict | None = None) -> str:
    """The agent's prose with its edit blocks replaced by one line where the first stood: the
    files `commit` (the journal's commit entry of these edits) changed, with the lines added
    and deleted, or the blocks' files when no commit recorded them."""
    blocks = list(EDIT_BLOCK.finditer(text))
    if not blocks:
        return text
    paths = [block["path"] or "a file" for block in blocks]
    kept = [text[: blocks[0].start()], edit_line(paths, commit)]
    ends = [block.end() for block in blocks]
    starts = [block.start() for block in blocks[1:]] + [len(text)]
    kept += [text[end:start] for end, start in zip(ends, starts, strict=True)]
    return re.sub(r"\n{3,}", "\n\n", "".join(kept))


def edit_line(paths: list[str], commit: dict | None) -> str:
    """'[edit to experiment.py +12 -3, notes.txt +4 -0: git show 1a2b3c4d]' for one turn."""
    stats = (commit or {}).get("stats")
    if stats:
        counts = ", ".join(f"{path} +{plus} -{minus}" for path, (plus, minus) in stats.items())
        return f"[edit to {counts}: git show {str(commit['sha'])[:8]}]"
    files = (commit or {}).get("files") or list(dict.fromkeys(paths))
    return f"[edit to {', '.join(files)}: the diff is in git log]"


def _baseline_record(workspace: Path, spec: TemplateSpec) -> RunRecord:
    verdict = validate_run(workspace / spec.baseline_run, spec)
    return RunRecord(
        name=spec.baseline_run,
        status="ok" if verdict.ok else "invalid",
        verdict_ok=verdict.ok,
        problems=verdict.problems,
        metrics=verdict.metrics,
        analysis="(baseline: the template's own run, before any agent edit)",
        claims_success_but_failed=False,
        seconds=None,
        sources=verdict.sources,
    )


def latest_per_name(runs: list[RunRecord]) -> list[RunRecord]:
    """The last attempt of each run name, in order."""
    return list({run.name: run for run in runs}.values())
