"""Ideas and playbooks: loading, one-line errors, --list-ideas, model choice."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.agent import llm
from orchestrator.ideas import IdeaError, list_ideas, load_idea, load_playbook, read_ideas
from tests.orchestrator.helpers import IDEAS


def write_idea(tmp_path: Path, name: str, **fields) -> Path:
    raw = {"Name": name, "Title": "t", "Experiment": "e", **fields}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({k: v for k, v in raw.items() if v is not None}))
    return path


def test_fixture_idea_loads_with_its_template_and_scores():
    idea = load_idea("tiny_lr", IDEAS)
    assert (idea.template, idea.scores["Feasibility"]) == ("tiny", 10)
    assert idea.raw["Title"] == idea.title


def test_missing_idea_lists_the_available_ones(tmp_path):
    write_idea(tmp_path, "alpha")
    write_idea(tmp_path, "beta")
    with pytest.raises(IdeaError, match=r"idea 'gamma' not found .*available: alpha, beta$"):
        load_idea("gamma", tmp_path)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"Title": None}, "Title"),
        ({"Experiment": ""}, "Experiment"),
        ({"Novelty": "high"}, "Novelty"),
    ],
)
def test_malformed_idea_names_the_field(tmp_path, fields, named):
    write_idea(tmp_path, "bad", **fields)
    with pytest.raises(IdeaError, match=f"field '{named}'") as err:
        load_idea("bad", tmp_path)
    assert "\n" not in str(err.value)


def test_default_template_and_invalid_json(tmp_path):
    write_idea(tmp_path, "plain")
    assert load_idea("plain", tmp_path).template == "temporal_sae"
    (tmp_path / "broken.json").write_text("{nope")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe")
    ideas, errors = read_ideas(tmp_path)
    assert [idea.name for idea in ideas] == ["plain"]
    assert [str(e).split(": ", 1)[0] for e in errors] == [
        str(tmp_path / "binary.json"),
        str(tmp_path / "broken.json"),
    ]
    assert "cannot be read" in str(errors[0]) and "invalid JSON" in str(errors[1])
    with pytest.raises(IdeaError, match="cannot be read"):  # all or nothing: the first error
        list_ideas(tmp_path)


def test_playbook_needs_a_list_of_messages(tmp_path):
    assert load_playbook(IDEAS / "playbooks" / "tiny_lr.json").responses[0].startswith("Reference")
    (tmp_path / "p.json").write_text(json.dumps({"responses": "just one"}))
    with pytest.raises(IdeaError, match="'responses'"):
        load_playbook(tmp_path / "p.json")


def test_model_choice_order(tmp_path):
    env = {"OPENAI_API_KEY": "k", "DEEPSEEK_API_KEY": "k"}
    assert llm.choose("tiny_lr", IDEAS, env=env).model == "openai/gpt-4.1"
    assert llm.choose("tiny_lr", IDEAS, model="anthropic/x", env=env).model == "anthropic/x"
    local = llm.choose("tiny_lr", IDEAS, model="openai/q", api_base="http://h/v1", env={})
    assert (local.api_base, local.api_key) == ("http://h/v1", llm.LOCAL_API_KEY)
    fallback = llm.choose("tiny_lr", IDEAS, env={})
    assert fallback.is_playbook_fallback and fallback.model == llm.REPLAY_MODEL
    with pytest.raises(llm.LLMError, match="no LLM configured"):
        llm.choose("none", tmp_path, env={})
    with pytest.raises(llm.LLMError, match="--api-base needs --model"):
        llm.choose("tiny_lr", IDEAS, api_base="http://h/v1", env={})


def test_journal_replay_skips_calls_of_unfinished_turns(tmp_path):
    lines = [
        {"kind": "prompt"},
        {"kind": "llm_call", "response": "a"},
        {"kind": "response"},
        {"kind": "prompt"},
        {"kind": "llm_call", "response": "lost"},
        {"kind": "prompt"},
        {"kind": "llm_call", "response": "b"},
        {"kind": "llm_call", "response": "c"},
        {"kind": "response"},
    ]
    path = tmp_path / "journal.jsonl"
    path.write_text("\n".join(map(json.dumps, lines)) + '\n{"kind": "llm_ca')
    assert llm.recorded_responses(path) == ["a", "b", "c"]


def test_list_ideas_cli(launch_args):
    out = subprocess.run(launch_args("--list-ideas"), capture_output=True, text=True, timeout=60)
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert out.returncode == 0 and names == ["tiny_crash", "tiny_fast", "tiny_lr"]
    missing = subprocess.run(
        launch_args("--idea", "nope"), capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2
    found = ", ".join(names)
    assert missing.stderr.strip() == f"error: idea 'nope' not found in {IDEAS}; available: {found}"


def test_an_unroutable_model_is_one_line(launch_args):
    with pytest.raises(llm.LLMError, match="unknown model 'nonsense'") as err:
        llm.choose("tiny_lr", IDEAS, model="nonsense", env={})
    assert "\n" not in str(err.value)
    assert llm.choose("tiny_lr", IDEAS, model="nonsense", api_base="http://h/v1", env={})
    done = subprocess.run(
        launch_args("--idea", "tiny_lr", "--model", "nonsense"), capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.startswith("error: unknown model 'nonsense'")
    assert "Traceback" not in done.stderr


def test_list_ideas_shows_the_good_ideas_beside_a_broken_file(tmp_path, launch_args):
    for name in ("tiny_fast", "tiny_lr"):
        shutil.copy(IDEAS / f"{name}.json", tmp_path)
    (tmp_path / "broken.json").write_text('{"Name": "broken",')
    out = subprocess.run(
        launch_args("--list-ideas", "--ideas-dir", str(tmp_path)), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()] == ["tiny_fast", "tiny_lr"]
    (error,) = out.stderr.splitlines()
    assert error.startswith(f"unreadable: {tmp_path / 'broken.json'}: invalid JSON")
    assert error.endswith("fix the syntax")

    for name in ("tiny_fast", "tiny_lr"):
        (tmp_path / f"{name}.json").unlink()
    none = subprocess.run(
        launch_args("--list-ideas", "--ideas-dir", str(tmp_path)), capture_output=True, text=True
    )
    assert none.returncode == 2 and none.stdout == ""
    assert none.stderr.splitlines()[1] == (
        f"error: no readable idea in {tmp_path}; pass --ideas-dir DIR"
    )
