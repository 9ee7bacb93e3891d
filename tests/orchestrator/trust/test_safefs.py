"""Unit tests of trust/safefs.py: nothing planted in a directory is followed, nothing blocks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.trust import safefs


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "outside.txt"
    target.write_text("the user's file")
    return target


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "run_1"
    directory.mkdir()
    return directory


def test_writes_refuse_a_symlink_and_leave_its_target(run_dir, outside):
    (run_dir / "referee.json").symlink_to(outside)
    with pytest.raises(safefs.Planted, match=r"^run_1/referee.json is a symlink; not followed$"):
        safefs.write_text(run_dir, "referee.json", "{}")
    assert outside.read_text() == "the user's file"


def test_writes_refuse_a_hard_link_before_truncating_it(run_dir, outside):
    os.link(outside, run_dir / "log.txt")
    with pytest.raises(safefs.Planted, match="hard link"):
        safefs.open_write(run_dir, "log.txt")
    assert outside.read_text() == "the user's file"


def test_a_fifo_neither_blocks_a_write_nor_a_read(run_dir):
    os.mkfifo(run_dir / "referee_log.txt")
    with pytest.raises(safefs.Planted, match="FIFO"):
        safefs.write_text(run_dir, "referee_log.txt", "x")
    with pytest.raises(safefs.Planted, match="FIFO"):
        safefs.read_bytes(run_dir / "referee_log.txt")
    with pytest.raises(safefs.Planted, match="FIFO"):
        safefs.sha256(run_dir / "referee_log.txt")


def test_a_symlinked_directory_is_not_entered(tmp_path, outside):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "plots").symlink_to(outside.parent)
    with pytest.raises(safefs.Planted, match=r"^plots/ is a symlink"):
        safefs.write_text(tmp_path / "ws" / "plots", "outside.txt", "x")
    assert outside.read_text() == "the user's file"


def test_reads_and_copies_refuse_links(run_dir, outside, tmp_path):
    (run_dir / "final_info.json").symlink_to(outside)
    with pytest.raises(safefs.Planted):
        safefs.read_text(run_dir / "final_info.json")
    with pytest.raises(safefs.Planted):
        safefs.copy_in(run_dir / "final_info.json", tmp_path, "copy.json")
    assert not (tmp_path / "copy.json").exists()


def test_plain_files_are_written_read_copied_and_hashed(run_dir, tmp_path):
    (run_dir / "old.json").write_text("a longer earlier content")
    safefs.write_text(run_dir, "old.json", "new")
    assert safefs.read_text(run_dir / "old.json") == "new"
    safefs.copy_in(run_dir / "old.json", tmp_path, "copy.json")
    assert (tmp_path / "copy.json").read_text() == "new"
    assert safefs.sha256(run_dir / "old.json") == safefs.sha256(tmp_path / "copy.json")
    with pytest.raises(ValueError, match="plain file name"):
        safefs.write_text(run_dir, "../journal.jsonl", "x")


def test_planted_lists_every_non_plain_entry(run_dir, outside):
    (run_dir / "sub").mkdir()
    (run_dir / "sub" / "ok.bin").write_bytes(b"1")
    (run_dir / "sub" / "link").symlink_to(outside)
    (run_dir / "plots").symlink_to(outside.parent)
    os.mkfifo(run_dir / "pipe")
    os.link(outside, run_dir / "hard")
    assert safefs.planted(run_dir) == [
        ("hard", "hard link"),
        ("pipe", "FIFO"),
        ("plots", "symlink"),
        ("sub/link", "symlink"),
    ]
    assert safefs.regular_files(run_dir) == ["sub/ok.bin"]
