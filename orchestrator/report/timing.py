"""Where one invocation's wall time went, by phase, for the closing table."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rich.table import Table

from orchestrator.journal import Journal


@dataclass
class Phases:
    """Seconds measured by this invocation; the runs' and the agent's come from the journal."""

    started_at: float = field(default_factory=time.time)  # epoch seconds this invocation began
    environments: float = 0.0
    lab_caches: float | None = None  # None: not set up by this invocation (an ended workspace)
    notes_and_plots: float | None = None

    def seconds(self, journal: Journal) -> dict[str, float]:
        """Phase name -> seconds: setup, runs, agent turns, report, the rest, and the total."""
        since = datetime.fromtimestamp(self.started_at, UTC)
        runs = journal.run_seconds(since)
        phases = {"environments": self.environments}
        if self.lab_caches is not None:
            phases["lab caches"] = self.lab_caches
        phases[f"experiment runs ({len(runs)})"] = sum(runs)
        refereed = journal.referee_seconds(since)
        if refereed:
            phases[f"referee: the lab's measurements ({len(refereed)})"] = sum(refereed)
        phases["agent turns (aider + LLM)"] = sum(t.seconds for t in journal.turns(since))
        if self.notes_and_plots is not None:
            phases["notes and plots"] = self.notes_and_plots
        total = time.time() - self.started_at
        phases["other (git, validation, start-up)"] = max(0.0, total - sum(phases.values()))
        phases["total"] = total
        return phases


def phase_table(phases: dict[str, float]) -> Table:
    """Wall time of one invocation by phase, the last row being the total."""
    table = Table(title="Wall time by phase")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("minutes", justify="right")
    for name, seconds in phases.items():
        style = "bold" if name == "total" else ""
        table.add_row(name, f"{seconds:.1f}", f"{seconds / 60:.1f}", style=style)
    return table
