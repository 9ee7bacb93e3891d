"""report/timing.py: the referee's time is its own phase, read from the verdicts' entries."""

from __future__ import annotations

import time
from pathlib import Path

from orchestrator.journal import Journal
from orchestrator.report.timing import Phases


def test_the_referee_is_a_phase_and_the_rest_is_what_no_phase_explains(tmp_path: Path) -> None:
    phases = Phases(started_at=time.time() - 100.0, environments=5.0)
    journal = Journal(tmp_path / "journal.jsonl")
    for seconds, refereed in ((30.0, 20.5), (10.0, None), (12.0, 7.5)):  # run_2 crashed
        journal.append("run", run_name="run_1", seconds=seconds)
        if refereed is not None:
            journal.append("verdict", run_name="run_1", ok=True, referee_seconds=refereed)
    journal.append("verdict", run_name="run_0", ok=True, referee_seconds=None)  # no referee
    journal.append("confirm_verdict", run_name="run_1_seed1", ok=True, referee_seconds=4.0)
    table = phases.seconds(journal)
    assert table["experiment runs (3)"] == 52.0
    assert table["referee: the lab's measurements (3)"] == 32.0
    other = table["other (git, validation, start-up)"]
    assert abs(other - (table["total"] - 5.0 - 52.0 - 32.0)) < 1e-6 and 10.9 < other < 12


def test_a_journal_from_before_the_referee_phase_has_no_referee_row(tmp_path: Path) -> None:
    phases, journal = Phases(started_at=time.time() - 10.0), Journal(tmp_path / "journal.jsonl")
    journal.append("run", run_name="run_1", seconds=3.0)
    journal.append("verdict", run_name="run_1", ok=True)  # no referee_seconds field
    table = phases.seconds(journal)
    assert table["experiment runs (1)"] == 3.0
    assert not any(name.startswith("referee") for name in table)
