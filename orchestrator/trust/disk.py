"""Disk caps on what agent code leaves behind, both from the template's `sandbox` section.

- `max_run_bytes`: a run dir past it is killed (the runner measures it while it runs; the
  sandbox's RLIMIT_FSIZE stops any one file at it). The bytes would stay, so afterwards its
  largest files are removed until at most KEPT_AFTER_KILL is left, the log kept: a failed try
  costs little disk, and the agent is told which files went.
- `max_workspace_bytes`: a workspace (its runs, scratch dirs and history together) past it runs
  nothing more. WorkspaceFull says so in one line; the loop journals it as a halt, so --resume
  goes on once there is room (or a larger cap).
Sizes are lstat sizes from a walk that follows no link: a planted symlink neither inflates a
run's size nor gets its target deleted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

KEPT_AFTER_KILL = 64 * 2**20  # at most this much of a killed run's files stays (or cap / 2)
SHOWN = 3  # removed files named in the note; the rest are counted


class WorkspaceFull(RuntimeError):
    """The workspace holds more than its template allows; the message says what to do."""


def dir_bytes(path: Path) -> int:
    """Bytes of the files under `path` (what a run wrote); vanishing files are skipped."""
    return sum(n for _, n in _sizes(Path(path)))


def check_workspace(root: Path, cap: int) -> None:
    """Raise WorkspaceFull when the files under `root` pass `cap` bytes."""
    used = dir_bytes(root)
    if used > cap:
        raise WorkspaceFull(
            f"the workspace holds {size(used)}, past its cap of {size(cap)} (template.json "
            "sandbox.max_workspace_bytes): no more runs; free space or raise the cap, then --resume"
        )


def after_kill(run_dir: Path, cap: int, keep: str) -> str:
    """Trim a run dir killed over its `cap` (never the file `keep`, its log); the one-line
    note for the verdict and the prompt."""
    removed = _trim(Path(run_dir), min(cap // 2, KEPT_AFTER_KILL), keep)
    note = f"killed: run dir over its cap of {size(cap)}"
    if not removed:
        return note
    shown = [f"{Path(run_dir).name}/{path} ({size(n)})" for path, n in removed[:SHOWN]]
    more = len(removed) - SHOWN
    return f"{note}; removed {', '.join(shown)}" + (f" and {more} more files" if more > 0 else "")


def size(n: int) -> str:
    """Bytes as the larger unit that keeps a digit before the point (1.0 GiB, 2.0 MiB)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _trim(run_dir: Path, budget: int, keep: str) -> list[tuple[str, int]]:
    """Remove the largest files until at most `budget` bytes are left; returns them."""
    files = sorted(_sizes(run_dir), key=lambda item: -item[1])
    left, removed = sum(n for _, n in files), []
    for path, n in files:
        if left <= budget:
            break
        if path != os.path.join(run_dir, keep):
            with suppress(FileNotFoundError):
                os.unlink(path)  # unlink never follows: a link itself is removed
            removed.append((Path(path).relative_to(run_dir).as_posix(), n))
            left -= n
    return removed


def _sizes(root: Path) -> Iterator[tuple[str, int]]:
    """(path, lstat size) of each non-directory under `root`; plain os calls, no pathlib: the
    runner sums these every second while a run writes."""
    for parent, _, names in os.walk(root):
        for name in names:
            path = os.path.join(parent, name)
            with suppress(OSError):  # vanished while we looked
                yield path, os.lstat(path).st_size
