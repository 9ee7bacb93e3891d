"""Which LLM drives the agent: a flag, a provider key in the environment, a local server, or a
recorded trajectory replayed through the same aider + litellm path.

Order: --replay > --model (with --api-base for llama.cpp / vLLM / ollama) > the first provider
key found in the environment > the idea's bundled playbook (announced loudly) > a clear error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.ideas import load_playbook, playbook_path

REPLAY_MODEL = "openai/replay"  # the name litellm sees while the replay server answers
LOCAL_API_KEY = (
    "sk-local"  # local OpenAI-compatible servers ignore the key but the client needs one
)

# Provider key -> default model (litellm names; all priced in litellm's bundled cost map).
PROVIDER_DEFAULTS = (
    ("ANTHROPIC_API_KEY", "anthropic/claude-sonnet-4-5"),
    ("OPENAI_API_KEY", "openai/gpt-4.1"),
    ("GEMINI_API_KEY", "gemini/gemini-2.5-pro"),
    ("DEEPSEEK_API_KEY", "deepseek/deepseek-chat"),
    ("OPENROUTER_API_KEY", "openrouter/anthropic/claude-sonnet-4.5"),
)


class LLMError(ValueError):
    """No usable LLM configuration; the message says what to set."""


@dataclass(frozen=True)
class LLMChoice:
    model: str  # litellm model name
    source: str  # human-readable: where the choice came from
    api_base: str | None = None
    api_key: str | None = None
    replay_path: Path | None = None  # a journal.jsonl or playbook.json served by a ReplayServer
    replay_responses: list[str] = field(default_factory=list)

    @property
    def is_replay(self) -> bool:
        return self.replay_path is not None

    @property
    def is_playbook_fallback(self) -> bool:
        return self.source.startswith("playbook")


def choose(
    idea_name: str,
    ideas_dir: Path,
    model: str | None = None,
    api_base: str | None = None,
    replay: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> LLMChoice:
    """Resolve the flags and the environment into one LLMChoice (see the module docstring)."""
    env = os.environ if env is None else env
    if replay is not None:
        return replay_choice(Path(replay), source=f"replay of {replay}")
    if api_base and not model:
        raise LLMError("--api-base needs --model too, e.g. --model openai/qwen2.5-coder")
    if model:
        if not api_base:
            check_routable(model)
        key = env.get("OPENAI_API_KEY", LOCAL_API_KEY) if api_base else None
        return LLMChoice(model, source="--model", api_base=api_base, api_key=key)
    for var, default in PROVIDER_DEFAULTS:
        if env.get(var):
            return LLMChoice(default, source=f"{var} found in the environment")
    book = playbook_path(idea_name, ideas_dir)
    if book.is_file():
        return replay_choice(book, source=f"playbook {book} (no LLM configured)")
    keys = ", ".join(var for var, _ in PROVIDER_DEFAULTS)
    raise LLMError(
        f"no LLM configured and idea '{idea_name}' has no playbook: set one of {keys}, "
        "or pass --model (and --api-base for a local server), or --replay <journal.jsonl>"
    )


def check_routable(model: str) -> None:
    """Fail now, in one line, on a model name litellm cannot route to any provider."""
    import litellm  # seconds to import; only a --model run pays it here

    try:
        litellm.get_llm_provider(model)
    except Exception as err:  # litellm raises its own BadRequestError subclasses here
        raise LLMError(
            f"unknown model {model!r}: litellm cannot tell its provider; write provider/model "
            "(e.g. anthropic/claude-sonnet-4-5, openai/gpt-4.1) or add --api-base for a "
            "local OpenAI-compatible server"
        ) from err


def replay_choice(path: Path, source: str) -> LLMChoice:
    return LLMChoice(
        REPLAY_MODEL,
        source=source,
        api_key=LOCAL_API_KEY,
        replay_path=path,
        replay_responses=recorded_responses(path),
    )


def recorded_responses(path: Path) -> list[str]:
    """The LLM replies to serve, in order, from a playbook or a recorded journal.jsonl.

    From a journal only the calls of turns that finished count: a turn cut off by a crash was
    asked again after --resume, and its half-done calls would shift every later reply.
    """
    if not Path(path).is_file():
        raise LLMError(f"replay file {path} not found; pass a journal.jsonl or a playbook .json")
    if Path(path).suffix != ".jsonl":
        return load_playbook(Path(path)).responses
    responses: list[str] = []
    pending: list[str] = []
    for entry in read_journal(Path(path)):
        kind = entry.get("kind")
        if kind == "llm_call":
            pending.append(str(entry.get("response", "")))
        elif kind == "response":
            responses += pending
            pending = []
        elif kind == "prompt":
            pending = []
    if not responses:
        raise LLMError(f"{path}: no recorded LLM calls to replay")
    return responses


def read_journal(path: Path) -> list[dict]:
    """A journal's entries, read without touching the file (orchestrator.journal.Journal
    seals a torn last line, which a replayed, maybe read-only, journal must not undergo)."""
    entries = []
    for line in Path(path).read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line: that step did not finish anyway
        if isinstance(entry, dict):
            entries.append(entry)
    return entries
