"""The coding agent: aider's Coder through litellm, with every LLM call journaled.

aider is driven through its Python API with the editable files only, its own git off (the
orchestrator commits) and every side channel closed: no shell commands, no URL scraping, no
repo map, no lint loop, no background chat summarising (a thread that would call the LLM at
times no replay could reproduce), no analytics and no model-price download. Each completion is
recorded as an "llm_call" journal entry (messages, reply, tokens, litellm's cost), which is what
--replay serves back.

Provider errors are handled here, in the one place every completion passes through, before aider
sees them (aider would retry some itself, for up to a minute, and turn the rest, an invalid key
included, into an empty reply): a refused key, permission or model ends the loop at once
(ProviderRefused); rate limits, timeouts, connection errors and 5xx are retried with back-off
(RetryPolicy), each retry journaled as "llm_retry"; a context-window error makes the turn
retry once with the chat after its first exchange dropped and the prompt's logs cut short. The
OpenAI client's own retries are off, so these are the only ones. Before every call the recorded
cost is checked against the spend cap.
"""

from __future__ import annotations

import os

# Before litellm is imported anywhere: use the bundled price map instead of fetching it.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("AIDER_ANALYTICS", "false")
os.environ.setdefault("AIDER_CHECK_UPDATE", "false")

import logging  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import litellm  # noqa: E402
import openai  # noqa: E402
from aider.analytics import Analytics  # noqa: E402
from aider.coders import Coder  # noqa: E402
from aider.history import ChatSummary  # noqa: E402
from aider.io import InputOutput  # noqa: E402
from aider.models import Model, model_info_manager  # noqa: E402

from orchestrator.agent.llm import (  # noqa: E402
    API_KEY_VAR,
    REPLAY_MODEL,
    LLMChoice,
    ProviderDown,
    ProviderRefused,
    RetryPolicy,
    SpendCapReached,
)
from orchestrator.console import console  # noqa: E402
from orchestrator.journal import Journal  # noqa: E402

log = logging.getLogger(__name__)
litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banner under every error

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
# Provider errors that no retry fixes, by HTTP status (litellm gives every provider's errors
# OpenAI's codes): what the user must fix.
REFUSED = {
    401: "the provider rejected the API key for {model}: check the key (for --api-base: "
    f"{API_KEY_VAR})",
    403: "the API key has no permission to use {model}: check the account's access",
    404: "the provider does not know the model {model}: check --model (and --api-base)",
}
RETRIED = {408, 409, 429}  # timeout, conflict, rate limit; and every 5xx, and no answer at all
LOG_LINES = 20  # after a context-window error, each fenced log in the prompt keeps its last lines
KEEP_MESSAGES = 2  # ... and the chat only its first exchange: the task and the agent's plan


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
        retry: RetryPolicy | None = None,
        max_cost: float = math.inf,
    ):
        _offline_model_info()
        self.workspace = Path(workspace)
        self.editable = [str(self.workspace / f) for f in editable]
        self.journal = journal
        retry = retry or RetryPolicy()
        self.model = _JournaledModel(choice.model, journal, retry, max_cost)
        extra = {k: v for k, v in (("api_base", api_base), ("api_key", choice.api_key)) if v}
        extra |= {"timeout": retry.request_timeout, "max_retries": 0}  # ours are the retries
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

        Raises an LLMHalt when the provider cannot go on (see the module docstring). After a
        context-window error the turn is sent once more, shortened; a second one ends the loop.
        """
        try:
            return self._turn(message)
        except _ContextTooLong:
            pass
        self.coder.done_messages = self.coder.done_messages[:KEEP_MESSAGES]
        short = shorten_logs(message, LOG_LINES)
        self.journal.append(
            "llm_retry", model=self.model.name, error="ContextWindowExceededError", shortened=True
        )
        console.print(
            f"[yellow]the prompt is too long for {self.model.name}'s context window: sent again "
            f"with the chat cut to its first exchange and logs to their last {LOG_LINES} lines[/]",
            soft_wrap=True,
        )
        try:
            return self._turn(short)
        except _ContextTooLong:
            raise ProviderDown(
                f"the prompt is still too long for {self.model.name}'s context window after "
                "shortening it: pick a model with a longer context (--model)"
            ) from None

    def _turn(self, message: str) -> str:
        """One aider turn. aider swallows Ctrl-C inside a call; it is re-raised here so the loop
        stops. An error carried out of aider leaves the chat as it was before the turn."""
        before = list(self.coder.cur_messages)
        with _ctrl_c_raises() as interrupted:
            try:
                reply = self.coder.run(with_message=message) or ""
            except _Abort as abort:
                self.coder.cur_messages = before
                raise abort.error from None
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


class _ContextTooLong(Exception):
    """The provider's context window cannot hold this request."""


class _Abort(BaseException):
    """Carries an error out of aider's turn: aider catches every Exception raised inside a
    turn, prints its traceback and goes on with an empty reply."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


class _JournaledModel(Model):
    """aider's Model, recording every completion in the journal before aider sees it, checking
    the spend cap before every call, and sorting provider errors (see the module docstring)."""

    def __init__(self, name: str, journal: Journal, retry: RetryPolicy, max_cost: float):
        super().__init__(name)
        self.journal = journal
        self.retry = retry
        self.max_cost = max_cost
        self.spent = journal.usage().cost

    def send_completion(self, messages, functions, stream, temperature=None):
        self._check_spend(messages)
        waited, attempt = 0.0, 1
        while True:
            try:
                hash_object, response = super().send_completion(
                    messages, functions, stream, temperature
                )
                break
            except openai.OpenAIError as err:  # litellm's errors all derive from these
                waited += self._wait_or_halt(err, attempt, waited)
                attempt += 1
        self._record(messages, response)
        return hash_object, response

    def _check_spend(self, messages: list[dict]) -> None:
        """Stop before a call whose prompt alone would take the recorded cost past the cap."""
        prompt_cost = _cost(model=self.name, messages=messages, completion="")
        if self.spent + prompt_cost > self.max_cost:
            raise _Abort(
                SpendCapReached(
                    f"the LLM calls so far cost ${self.spent:.4f} and the next prompt alone "
                    f"~${prompt_cost:.4f}, past the --max-cost cap of ${self.max_cost:.2f}: "
                    "resume with a higher --max-cost to go on"
                )
            )

    def _wait_or_halt(self, err: openai.OpenAIError, attempt: int, waited: float) -> float:
        """Sleep before retrying a transient error and return the seconds slept; raise for any
        other error, or when the retries or their total wait are used up."""
        status = getattr(err, "status_code", None)
        what = f"{type(err).__name__}{f' {status}' if status else ''}: {_first_line(err)}"
        if isinstance(err, litellm.ContextWindowExceededError):
            raise _Abort(_ContextTooLong(what))
        if status in REFUSED:
            raise _Abort(ProviderRefused(f"{REFUSED[status].format(model=self.name)} ({what})"))
        if not _transient(err, status):
            raise _Abort(ProviderDown(f"{self.name} failed ({what}); no retry helps this"))
        wait = self.retry.delay(attempt, _retry_after(err))
        if attempt >= self.retry.tries or waited + wait > self.retry.max_wait:
            raise _Abort(
                ProviderDown(
                    f"{self.name} still failing after {attempt} tries and {waited:.0f} s of "
                    f"waiting ({what}); try again later"
                )
            )
        self.journal.append(
            "llm_retry", model=self.name, error=what, attempt=attempt, wait=round(wait, 3)
        )
        console.print(
            f"[yellow]LLM call failed ({what}); retry {attempt} of {self.retry.tries - 1} "
            f"in {wait:.1f} s[/]",
            soft_wrap=True,
        )
        time.sleep(wait)
        return wait

    def _record(self, messages: list[dict], response: Any) -> None:
        usage = getattr(response, "usage", None)
        cost = _cost(completion_response=response)
        self.spent += cost
        self.journal.append(
            "llm_call",
            model=self.name,
            messages=messages,
            response=_reply_text(response),
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            cost=cost,
        )


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


def _cost(**call: Any) -> float:
    """litellm's price of a response, or of a prompt about to be sent."""
    try:
        return float(litellm.completion_cost(**call))
    except Exception:  # an unpriced model (a local server) raises; it costs us nothing
        return 0.0


def _transient(err: openai.OpenAIError, status: int | None) -> bool:
    no_answer = isinstance(err, litellm.Timeout | litellm.APIConnectionError)
    return no_answer or status in RETRIED or (status or 0) >= 500


def _retry_after(err: openai.OpenAIError) -> float | None:
    """The server's Retry-After in seconds, when it sent one as a number."""
    headers = getattr(err, "litellm_response_headers", None) or {}
    try:
        return max(0.0, float(headers.get("retry-after")))
    except (TypeError, ValueError):
        return None


def _first_line(err: BaseException) -> str:
    """The provider's own words, without litellm's "litellm.XError: XError: OpenAIException - "."""
    text = LITELLM_PREFIX.sub("", str(getattr(err, "message", "") or err).strip())
    return (text.splitlines() or [""])[0][:200]


LITELLM_PREFIX = re.compile(r"^(?:(?:litellm\.\w+|\w+Error|\w+Exception)(?::| -) )*")


def shorten_logs(message: str, lines: int) -> str:
    """`message` with each fenced block (```...```) cut to its last `lines` lines: logs and
    tracebacks end with what matters."""

    def tail(match: re.Match) -> str:
        body = match["body"].splitlines()
        if len(body) <= lines:
            return match[0]
        cut = [f"[... {len(body) - lines} earlier lines cut: the context window is full]"]
        return match["open"] + "\n".join(cut + body[-lines:]) + "\n```"

    return FENCED.sub(tail, message)


FENCED = re.compile(r"(?P<open>^```[^\n]*\n)(?P<body>.*?)\n```", re.DOTALL | re.MULTILINE)


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
