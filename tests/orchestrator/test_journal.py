"""journal.py: append-only, durable, tolerant of a torn last line."""

import json
import logging
import os
import subprocess
import sys
from datetime import datetime

from orchestrator.journal import Journal
from tests.orchestrator.helpers import REPO


def test_append_adds_seq_and_utc_timestamp_and_reads_back(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    first = journal.append("start", idea="toy", max_runs=5)
    journal.append("run", run_name="run_1", attempt=1, seconds=1.5, path=tmp_path)
    journal.append("run_done", run_name="run_1", status="ok")
    assert first["seq"] == 0 and first["kind"] == "start"
    assert datetime.fromisoformat(first["ts"]).utcoffset().total_seconds() == 0
    assert [e["seq"] for e in journal.entries()] == [0, 1, 2]
    assert journal.entries("run")[0]["path"] == str(tmp_path)  # non-JSON values as text
    assert journal.last("run_done")["status"] == "ok"
    assert journal.last("verdict") is None
    assert Journal(tmp_path / "absent.jsonl").entries() == []


def test_torn_last_line_is_skipped_with_a_warning_and_appends_continue(tmp_path, caplog):
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.append("start", idea="toy")
    journal.append("run", run_name="run_1")
    with path.open("a") as f:  # what kill -9 in the middle of a write leaves
        f.write('{"kind": "verdict", "seq": 2, "ok": tr')
    with caplog.at_level(logging.WARNING):
        assert [e["kind"] for e in Journal(path).entries()] == ["start", "run"]
    assert "line 3 is torn" in caplog.text

    resumed = Journal(path)
    entry = resumed.append("verdict", run_name="run_1", ok=True)
    assert entry["seq"] == 2
    assert [e["kind"] for e in resumed.entries()] == ["start", "run", "verdict"]
    assert path.read_text().count("\n") == 4  # the fragment stays on a line of its own


def test_entries_survive_kill_9_of_the_writer(tmp_path):
    path = tmp_path / "journal.jsonl"
    script = (
        "import os, signal, sys\n"
        "from orchestrator.journal import Journal\n"
        "j = Journal(sys.argv[1])\n"
        "for i in range(3):\n"
        "    j.append('run', run_name=f'run_{i}', payload='x' * 10000)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, timeout=30)
    assert proc.returncode == -9
    entries = Journal(path).entries("run")
    assert [e["run_name"] for e in entries] == ["run_0", "run_1", "run_2"]
    assert all(len(json.dumps(e)) > 10000 for e in entries)


def test_each_append_is_flushed_and_synced_before_it_returns(tmp_path, monkeypatch):
    """kill -9 leaves the page cache intact, so only a spy on fsync sees the sync go missing."""
    path = tmp_path / "journal.jsonl"
    real_fsync, synced = os.fsync, []

    def spy(fd: int) -> None:
        stat = os.fstat(fd)
        synced.append((stat.st_ino, stat.st_size))  # the size the OS had when it was synced
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    journal = Journal(path)
    for i in range(3):
        journal.append("run", run_name=f"run_{i}")
        file_syncs = [size for inode, size in synced if inode == path.stat().st_ino]
        assert file_syncs[-1:] == [path.stat().st_size] and len(file_syncs) == i + 1
