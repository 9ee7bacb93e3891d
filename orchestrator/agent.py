"""The coding agent: aider's Coder through litellm, with every LLM call journaled.

aider is driven through its Python API with the editable files only, its own git off (the
orchestrator commits) and every side channel closed: no shell commands, no URL scraping, no
repo map, no lint loop, no background chat summarising (a thread that would call the LLM at
times no replay could reproduce), no analytics and no model-price download. Each completion is
recorded as an "llm_call" journal entry (messages, reply, tokens, litellm's cost), which is what
--replay serves back.
"""

from __future__ import annotations

import os

# Before litellm is imported anywhere: use the bundled price map instead of fetching it.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("AIDER_ANALYTICS", "false")
os.environ.setdefault("AIDER_CHECK_UPDATE", "false")

import logging  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import litellm  # noqa: E402
from aider.analytics import Analytics  # noqa: E402
from aider.coders import Coder  # noqa: E402
from aider.history import ChatSummary  # noqa: E402
from aider.io import InputOutput  # noqa: E402
from aider.models import Model, model_info_manager  # noqa: E402

from orchestrator.journal import Journal  # noqa: E402
from orchestrator.llm import REPLAY_MODEL, LLMChoice  # noqa: E402

log = logging.getLogger(__name__)

EDIT_FORMAT = "diff"  # SEARCH/REPLACE blocks: robust across model sizes, cheap in tokens
# Zero-cost, large-context entry for the replay server's model name.
REPLAY_MODEL_INFO = {
    "max_input_tokens": 200_000,
    "max_output_tokens": 16_384,
    "input_cost_per_token": 0.0,
    "output_cost_per_token": 0.0,
    "litellm_provider": "openai",
    "mode": "chat",
}


class Agent:
    """One aider Coder over the workspace's editable files; `turn(message)` returns the reply."""

    def __init__(
        self,
        workspace: Path,
        editable: list[str],
        choice: LLMChoice,
        journal: Journal,
        api_base: str | None = None,
        history: list[tuple[str, str]] | None = None,
    ):
        _offline_model_info()
        self.workspace = Path(workspace)
        self.editable = [str(self.workspace / f) for f in editable]
        self.model = _JournaledModel(choice.model, journal)
        extra = {k: v for k, v in (("api_base", api_base), ("api_key", choice.api_key)) if v}
        self.model.extra_params = {**(self.model.extra_params or {}), **extra}
        io = _WorkspaceIO(self.workspace, yes=True, pretty=False, fancy_input=False)
        self.coder = Coder.create(
            main_model=self.model,
            edit_format=EDIT_FORMAT,
            io=io,
            fnames=self.editable,
            stream=False,
            use_git=False,
            auto_commits=False,
            dirty_commits=False,
            auto_lint=False,
            suggest_shell_commands=False,
            detect_urls=False,
            map_tokens=0,
            summarizer=_NeverSummarize([self.model], 0),
            analytics=_NoAnalytics(),
        )
        self.coder.root = str(self.workspace)
        for user, assistant in history or []:
            self.coder.done_messages += [
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]

    def turn(self, message: str) -> str:
        """Send `message`, let aider apply the reply's edits, and return the reply text.

        aider swallows Ctrl-C inside a call; it is re-raised here so the loop stops.
        """
        with _ctrl_c_raises() as interrupted:
            reply = self.coder.run(with_message=message) or ""
        if interrupted:
            raise KeyboardInterrupt
        # A "yes" to editing a file outside the chat adds it for good; the loop reverts such
        # edits, and the next turn starts with the editable files only.
        self.coder.abs_fnames = set(self.editable)
        return reply


class _WorkspaceIO(InputOutput):
    """aider's IO answering yes (no human is there), except to editing or creating a file
    outside the workspace: "../saelab/evals.py" is beyond the reach of the protected-file
    guard, so aider must refuse it. Edits inside the workspace are allowed here and judged by
    the guard, which reverts them and tells the agent."""

    def __init__(self, workspace: Path, **kwargs: Any):
        super().__init__(root=str(workspace), **kwargs)
        self.workspace = workspace.resolve()

    def confirm_ask(self, question: str, default: str = "y", subject: str | None = None, **kw: Any):
        if subject and not self._inside(subject):
            self.tool_warning(f"refused: {subject} is outside the workspace")
            return False
        return super().confirm_ask(question, default, subject, **kw)

    def _inside(self, subject: str) -> bool:
        path = Path(subject) if Path(subject).is_absolute() else self.workspace / subject
        return path.resolve().is_relative_to(self.workspace)


class _JournaledModel(Model):
    """aider's Model, recording every completion in the journal before aider sees it."""

    def __init__(self, name: str, journal: Journal):
        super().__init__(name)
        self.journal = journal

    def send_completion(self, messages, functions, stream, temperature=None):
        hash_object, response = super().send_completion(messages, functions, stream, temperature)
        usage = getattr(response, "usage", None)
        self.journal.append(
            "llm_call",
            model=self.name,
            messages=messages,
            response=_reply_text(response),
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            cost=_cost(response),
        )
        return hash_object, response


class _NeverSummarize(ChatSummary):
    """Keep the whole chat: aider would otherwise summarise in a background thread."""

    def too_big(self, messages: list[dict[str, Any]]) -> bool:
        return False


class _NoAnalytics(Analytics):
    """aider's Analytics without its constructor, which writes ~/.aider/analytics.json; with
    no provider set, `event` is a no-op."""

    def __init__(self) -> None:
        pass


def _reply_text(response: Any) -> str:
    try:
        return response.choices[0].message.content or ""
    except (AttributeError, IndexError):
        return ""


def _cost(response: Any) -> float:
    try:
        return float(litellm.completion_cost(completion_response=response))
    except Exception:  # an unpriced model (a local server) raises; it costs us nothing
        return 0.0


def _offline_model_info() -> None:
    """aider downloads litellm's price map into ~/.aider on first use; hand it the bundled one."""
    if not model_info_manager._cache_loaded:
        model_info_manager.content = litellm.model_cost
        model_info_manager._cache_loaded = True
    if REPLAY_MODEL not in litellm.model_cost:
        litellm.register_model({REPLAY_MODEL: REPLAY_MODEL_INFO})


@contextmanager
def _ctrl_c_raises() -> Iterator[list[bool]]:
    """Note a Ctrl-C during the turn (aider catches the KeyboardInterrupt itself)."""
    interrupted: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(True)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
