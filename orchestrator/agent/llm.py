"""Which LLM drives the agent: a flag, a provider key in the environment, a local server, or a
recorded trajectory replayed through the same aider + litellm path.

Order: --replay > --model (with --api-base for llama.cpp / vLLM / ollama) > the first provider
key found in the environment > the idea's bundled playbook (announced loudly) > a clear error.
`preflight` then checks, before any setup, that the chosen LLM can answer at all. The errors
that stop a loop already under way (LLMHalt and its kinds) are defined here too, so the loop and
the CLI can catch them without importing litellm.
"""

from __future__ import annotations

import os
import random
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.ideas import load_playbook, playbook_path
from orchestrator.journal import Journal

REPLAY_MODEL = "openai/replay"  # the name litellm sees while the replay server answers
LOCAL_API_KEY = (
    "sk-local"  # local OpenAI-compatible servers ignore the key but the client needs one
)
# The key sent to an --api-base server; provider keys such as OPENAI_API_KEY never go there.
API_KEY_VAR = "SCIENTIST_API_KEY"
PROBE_SECONDS = 5.0  # how long an --api-base server may take to list its models

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


class LLMHalt(RuntimeError):
    """The loop stops before its next LLM call; the journal is intact and --resume continues."""


class ProviderRefused(LLMHalt):
    """The provider refused the key, the permission or the model: a setting to fix."""


class ProviderDown(LLMHalt):
    """The provider kept failing past the retries, or failed in a way no retry helps."""


class SpendCapReached(LLMHalt):
    """The next call would take the recorded LLM cost past --max-cost."""


@dataclass(frozen=True)
class RetryPolicy:
    """How the agent waits out transient provider errors (rate limits, timeouts, 5xx)."""

    tries: int = 6  # calls per request, the first included
    first_delay: float = 2.0  # seconds before the first retry; doubles with each retry
    max_delay: float = 60.0  # cap on one back-off wait
    max_wait: float = 300.0  # cap on all the waits of one request together
    request_timeout: float = 300.0  # seconds one call may take before it counts as a timeout

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed call number `attempt` (1, 2, ...): the server's
        Retry-After when it sends one, else exponential back-off with "equal jitter" (half
        fixed, half random), so parallel clients do not retry in lockstep."""
        if retry_after is not None:
            return retry_after
        backoff = min(self.max_delay, self.first_delay * 2 ** (attempt - 1))
        return backoff / 2 + random.uniform(0, backoff / 2)


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
        key = (env.get(API_KEY_VAR) or LOCAL_API_KEY) if api_base else None
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


def preflight(choice: LLMChoice) -> None:
    """Fail now, in one line, on an LLM that cannot answer: an --api-base server that does not
    list its models within PROBE_SECONDS, or a provider whose settings litellm's own check
    (`validate_environment`) finds unset."""
    if choice.is_replay:
        return
    if choice.api_base:
        _probe(choice.api_base, choice.api_key)
        return
    import litellm

    missing = litellm.validate_environment(choice.model, api_key=choice.api_key)["missing_keys"]
    if missing:
        raise LLMError(
            f"{choice.model} cannot be called: litellm's check finds {', '.join(missing)} unset; "
            f"export {missing[0]}=... (or the setting your provider uses), or pick another LLM "
            "with --model"
        )


def _probe(api_base: str, api_key: str | None) -> None:
    url = api_base.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=PROBE_SECONDS
        ):
            return
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise LLMError(
                f"{url} refused the key (HTTP {err.code}): set {API_KEY_VAR} to the key this "
                "server expects"
            ) from None
        if err.code == 404:
            raise LLMError(
                f"{url} answered 404: check --api-base (OpenAI-compatible servers usually "
                "serve under .../v1)"
            ) from None
        return  # it answered: a server without a models list can still chat
    except (OSError, ValueError) as err:  # refused, unresolved, timed out, not a URL
        reason = getattr(err, "reason", err)
        raise LLMError(
            f"no answer from {url} within {PROBE_SECONDS:.0f} s ({reason}): start the server "
            "or fix --api-base"
        ) from None


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
    responses = Journal(Path(path), read_only=True).replies_served()
    if not responses:
        raise LLMError(f"{path}: no recorded LLM calls to replay")
    return responses
