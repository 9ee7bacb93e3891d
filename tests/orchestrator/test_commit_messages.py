"""prompts.commit_message: the agent's one-line summary, or a subject derived from its edit when
it wrote none before its edit blocks."""

from __future__ import annotations

from orchestrator.prompts import SUMMARY_CHARS, commit_message, edit_subject
from tests.orchestrator.helpers import edit_reply

LR = ("experiment.py", "lr = 2e-3  # step size", "lr = 1e-3  # step size")


def test_the_first_prose_line_is_the_subject():
    reply = edit_reply("## Lower the learning rate", LR)
    assert commit_message("run_2", 0, reply) == "run_2: Lower the learning rate"
    assert commit_message("run_2", 2, reply) == "run_2 (attempt 3): Lower the learning rate"


def test_a_reply_that_opens_with_its_edit_gets_a_subject_from_the_edit():
    reply = edit_reply("", LR, tail="I lowered the learning rate.")  # prose only after the edit
    assert commit_message("run_1", 0, reply) == "run_1: experiment.py: lr = 1e-3 (was lr = 2e-3)"


def test_derived_subjects_name_every_file_and_the_first_added_or_removed_line():
    notes = ("notes.txt", "", "run_1: lr halved")
    assert edit_subject(edit_reply("", LR, notes)) == (
        "experiment.py, notes.txt: lr = 1e-3 (was lr = 2e-3)"
    )
    removal = ("experiment.py", "x = 1\ny = 2", "x = 1")
    assert edit_subject(edit_reply("", removal)) == "experiment.py: remove y = 2"
    assert edit_subject("No edit at all.") == ""


def test_a_long_subject_is_cut_to_the_subject_length():
    message = commit_message("run_1", 0, "x" * 200)
    assert len(message) == len("run_1: ") + SUMMARY_CHARS and message.endswith("...")
    assert commit_message("run_1", 0, "") == "run_1: (no summary)"
