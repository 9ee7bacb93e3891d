"""Run an experiment (or any command) so that nothing it does can hurt the orchestrator.

- its own session and process group, killed as a whole (SIGTERM, then SIGKILL after a grace
  period) at the timeout, on Ctrl-C, and after a normal exit (stray background processes);
- agent code (experiment, plot) in the sandbox (trust/sandbox.py): it writes only its run
  directory and a private temp dir, sees an allow-listed environment, no network, no other
  process, and whatever it starts dies with it; a run directory over its size cap is killed
  and trimmed, and a workspace over its cap runs nothing more (trust/disk.py);
- otherwise an environment without LLM credentials;
- stdout and stderr streamed into log.txt with bounded memory: only ring-buffer tails stay in
  memory and the log keeps its first and last LOG_LIMIT_BYTES / 2, so a run that prints
  gigabytes costs neither RAM nor disk; the log and the tails are scrubbed of secrets
  (trust/redact.py) before anything reads them;
- a live rich view (elapsed time + last log lines) on a terminal, plain lines otherwise.
"""

from __future__ import annotations

import ctypes
import fnmatch
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from orchestrator import envs
from orchestrator.console import console as default_console
from orchestrator.templates import TemplateSpec, expand_command, resolve_python
from orchestrator.trust import disk, safefs
from orchestrator.trust.redact import Redactor
from orchestrator.trust.sandbox import (
    Box,
    default_memory_cap,
    dies_with_parent,
    interpreter_dirs,
    sandbox_env,
)

log = logging.getLogger(__name__)

# Variables that carry LLM credentials or endpoints; fnmatch patterns against the upper-cased name.
# HF_TOKEN stays: experiments on a GPU machine may need the hub.
# fmt: off
SECRET_PATTERNS = (
    "*_API_KEY", "*_API_BASE", "*_API_VERSION", "*_BASE_URL", "*_ORGANIZATION",
    "OPENAI_*", "ANTHROPIC_*", "AZURE_*", "GEMINI_*", "VERTEX*", "DEEPSEEK_*", "MISTRAL_*",
    "GROQ_*", "COHERE_*", "OPENROUTER_*", "TOGETHER*", "XAI_*", "FIREWORKS_*", "PERPLEXITY*",
    "LITELLM_*", "AIDER_*", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
)
# fmt: on
GRACE_SECONDS = 5.0  # SIGTERM -> SIGKILL: time for the child to flush and exit cleanly
LOG_LIMIT_BYTES = 16 * 2**20  # log.txt keeps the first and the last half of this
TAIL_BYTES = 4096  # per stream, fed back to the agent when a run fails
LIVE_LINES = 12  # log lines shown in the live view
HEARTBEAT_SECONDS = 30.0  # plain (non-TTY) progress line interval
POLL_SECONDS = 0.1
CHUNK_BYTES = 64 * 1024
MAX_PARTIAL_LINE = 64 * 1024  # a line longer than this is written without waiting for its end
LOG_FILE = "log.txt"  # a run's output, in its run dir
PID_FILE = ".runner.pgid"  # in a run dir while its command runs; lets a resume kill a stale run
SCRATCH = ".scratch"  # in a workspace: private temp dirs and the lab cache overlay's writes
QUOTA_EVERY = 1.0  # seconds between two measurements of a sandboxed run directory's size
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
# how a failed allocation reads under RLIMIT_DATA: Python, numpy, torch's CPU allocator, C++
OUT_OF_MEMORY = (
    "MemoryError", "Cannot allocate memory", "can't allocate memory", "Unable to allocate",
    "std::bad_alloc",
)  # fmt: skip


@dataclass
class RunResult:
    returncode: int | None  # None: the command could not be started; < 0: killed by a signal
    timed_out: bool
    seconds: float
    log_path: Path
    stdout_tail: str  # the last TAIL_BYTES of each stream
    stderr_tail: str
    pgid: int | None = None  # the process group the command ran in
    over_quota: bool = False  # killed because its run directory passed the size cap
    note: str = ""  # over quota: what was killed and which files were removed (trust/disk.py)
    redacted: int = 0  # secrets scrubbed from its output
    memory_cap: int | None = None  # bytes each of its processes could allocate (sandboxed)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.over_quota

    @property
    def over_memory(self) -> bool:
        """It failed because an allocation hit its memory cap."""
        failed = self.returncode not in (0, None) and not self.timed_out
        tails = self.stdout_tail + self.stderr_tail
        return bool(self.memory_cap) and failed and any(s in tails for s in OUT_OF_MEMORY)

    @property
    def memory_gib(self) -> str:
        return f"{(self.memory_cap or 0) / 2**30:.3g} GiB"

    def memory_verdict(self) -> str:
        return f"killed: over its memory cap of {self.memory_gib}"

    def record(self) -> dict[str, Any]:
        """What the journal keeps of the run."""
        keep = {"returncode": self.returncode, "timed_out": self.timed_out}
        return keep | {"seconds": round(self.seconds, 3), "redacted": self.redacted}


def scrubbed_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) without LLM API keys, endpoints and agent settings."""
    env = dict(os.environ if base is None else base)
    return {
        name: value
        for name, value in env.items()
        if not any(fnmatch.fnmatchcase(name.upper(), p) for p in SECRET_PATTERNS)
    }


def run_experiment(
    workspace: Path,
    spec: TemplateSpec,
    run_name: str,
    timeout: float | None = None,
    live: bool = True,
) -> RunResult:
    """Run the template's run_command for `run_name` in `workspace`, in a fresh run dir,
    sandboxed: it may write that run dir only. WorkspaceFull when the workspace is past its
    cap; a run killed over its own cap is trimmed, its note says what went."""
    workspace = Path(workspace)
    disk.check_workspace(workspace, spec.max_workspace_bytes)
    run_dir = _fresh_run_dir(workspace, run_name)
    result = run_sandboxed(
        expand_command(spec.run_command, spec, out_dir=run_name),
        spec,
        cwd=workspace,
        writable=run_dir,
        log_path=run_dir / LOG_FILE,
        timeout=spec.timeout_seconds if timeout is None else timeout,
        live=live,
        title=run_name,
        pid_file=run_dir / PID_FILE,
    )
    if result.over_quota:
        result.note = disk.after_kill(run_dir, spec.max_run_bytes, keep=LOG_FILE)
    return result


def run_sandboxed(
    cmd: list[str],
    spec: TemplateSpec,
    cwd: Path,
    writable: Path,
    scratch: Path | None = None,
    reads: tuple[Path, ...] = (),
    sealed: bool = False,
    **kwargs: Any,
) -> RunResult:
    """`cmd` (agent or lab code) in the sandbox: `writable` and a private temp dir are all it
    may write; the lab cache reads through an overlay whose writes go under `scratch`
    (default: the workspace's own scratch dir, shared by its runs, never by the referee).
    It reads `cwd`, `reads`, the template's readable dirs and, `sealed` (the referee), the
    lab's sealed data; besides those only system files, the interpreters and the project."""
    scratch = scratch or cwd / SCRATCH
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="home-", dir=scratch) as home:
        env = sandbox_env(Path(home), spec.network)
        cache = None
        if spec.shared_cache:
            variable, root = spec.shared_cache
            env[variable] = str(root)
            root.mkdir(parents=True, exist_ok=True)
            cache = (root, scratch / "cache")
        named = [*spec.readable, *(spec.referee_readable if sealed else [])]
        env |= {variable: str(path) for variable, path in named if variable}
        readable = [cwd, *reads, *_code_dirs(spec), *(path for _, path in named)]
        # the referee (lab code) needs more than a small template cap: 4 GiB was too little
        # for the cpu profile's evals (measured); it never gets less than the default
        memory = max(spec.max_memory_bytes, default_memory_cap() if sealed else 0)
        box = Box(
            [Path(writable), Path(home)], spec.network, cache, spec.max_run_bytes, readable, memory
        )
        quota = (Path(writable), box.max_bytes)
        return run_command(
            box.wrap(cmd), cwd=cwd, env=env, quota=quota, memory_cap=box.max_memory, **kwargs
        )


def _code_dirs(spec: TemplateSpec) -> list[Path]:
    """The template's interpreter (its venv and base installation) and the project's code."""
    return [*interpreter_dirs(resolve_python(spec)), *(envs.REPO / p for p in envs.PACKAGES)]


def run_command(
    cmd: list[str],
    cwd: Path,
    log_path: Path,
    timeout: float,
    env: dict[str, str] | None = None,
    live: bool = True,
    title: str = "",
    *,
    grace_seconds: float = GRACE_SECONDS,
    log_limit_bytes: int = LOG_LIMIT_BYTES,
    pid_file: Path | None = None,
    console: Console | None = None,
    quota: tuple[Path, int] | None = None,
    memory_cap: int | None = None,
) -> RunResult:
    """Run `cmd` in its own process group with a scrubbed `env` (default: os.environ), stream
    its output to `log_path`, and kill the whole group at `timeout` seconds, on Ctrl-C, or when
    the directory of `quota` (dir, bytes) grows past its bytes. `memory_cap`: the bytes the
    sandbox let each process allocate, for the verdict on a run that ran out."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    redactor = Redactor.from_environ()
    sink = _CappedLog(log_path, log_limit_bytes // 2, redactor)
    sink.write(f"$ {shlex.join(cmd)}\n".encode())
    view = _View(console or default_console, title or cmd[0], timeout, log_path, live)
    start = time.monotonic()
    with _adopting_orphans():
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=scrubbed_env(env) | {"PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=dies_with_parent(),  # nothing outlives the orchestrator, kill -9 too
            )
        except OSError as err:
            sink.write(f"could not start: {err}\n".encode())
            sink.close()
            return RunResult(None, False, 0.0, log_path, "", f"could not start {cmd[0]}: {err}")
        tails, ended = _supervise(proc, sink, view, timeout, grace_seconds, pid_file, quota)
    if quota and ended == "exit" and disk.dir_bytes(quota[0]) > quota[1]:  # grew between checks
        ended = "quota"
    seconds = time.monotonic() - start
    result = RunResult(
        proc.returncode,
        ended == "timeout",
        seconds,
        log_path,
        _clean_tail(tails[0], redactor),
        _clean_tail(tails[1], redactor),
        proc.pid,
        over_quota=ended == "quota",
        redacted=sink.redacted,
        memory_cap=memory_cap,
    )
    view.report(result)
    return result


def _supervise(
    proc: subprocess.Popen,
    sink: _CappedLog,
    view: _View,
    timeout: float,
    grace_seconds: float,
    pid_file: Path | None,
    quota: tuple[Path, int] | None = None,
) -> tuple[tuple[_Ring, _Ring], str]:
    """Stream the output and wait; whatever ends the wait (exit, timeout, quota, Ctrl-C), kill
    and reap the whole group. Returns the (stdout, stderr) tails and "exit" | "timeout" |
    "quota"."""
    deadline = time.monotonic() + timeout
    tails = (_Ring(TAIL_BYTES), _Ring(TAIL_BYTES))
    pumps = [
        threading.Thread(target=_pump, args=(stream, sink, tail, view.lines), daemon=True)
        for stream, tail in zip((proc.stdout, proc.stderr), tails, strict=True)
    ]
    ended = "exit"
    try:
        if pid_file:
            safefs.write_text(pid_file.parent, pid_file.name, str(proc.pid))
        for pump in pumps:
            pump.start()
        with view:
            ended = _wait_for_exit(proc.pid, deadline, view, quota)
    finally:
        # also on Ctrl-C: the child has its own session, so the terminal's SIGINT missed it
        _kill_group(proc.pid, grace_seconds)
        proc.wait()
        _reap_group(proc.pid)
        for pump in pumps:
            if pump.ident is not None:
                pump.join(timeout=5)
        if ended == "timeout":
            sink.write(f"\n[runner: killed after the {timeout:.0f} s timeout]\n".encode())
        if ended == "quota" and quota:
            cap = f"{quota[1] / 2**30:.1f} GiB"
            sink.write(f"\n[runner: killed: {quota[0].name}/ grew past {cap}]\n".encode())
        sink.close()
        if pid_file:
            pid_file.unlink(missing_ok=True)
    return tails, ended


def _fresh_run_dir(workspace: Path, run_name: str) -> Path:
    """Remove what a failed or interrupted try left in `run_name/` and make it anew."""
    if Path(run_name).name != run_name or run_name in ("", ".", ".."):
        raise ValueError(f"run name {run_name!r} must be a plain directory name like run_1")
    run_dir = workspace / run_name
    stale_pid = run_dir / PID_FILE
    if stale_pid.is_file():  # the orchestrator died mid-run (kill -9): its child may live on
        with suppress(ValueError, OSError):  # OSError: safefs.Planted, a link left by the run
            pgid = int(safefs.read_text(stale_pid))
            if _runs_in(pgid, workspace):  # not a stranger that inherited the number
                log.warning("killing process group %d left by an interrupted %s", pgid, run_name)
                _kill_group(pgid, GRACE_SECONDS)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    return run_dir


def _wait_for_exit(
    pid: int, deadline: float, view: _View, quota: tuple[Path, int] | None = None
) -> str:
    """Poll until the leader exits (left unreaped, so its pid cannot be reused as the group id
    before the group is killed), the deadline passes, or the quota dir outgrows its cap."""
    next_quota_check = time.monotonic()
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        now = time.monotonic()
        if now >= deadline:
            return "timeout"
        if quota and now >= next_quota_check:
            next_quota_check = now + QUOTA_EVERY
            if disk.dir_bytes(quota[0]) > quota[1]:
                return "quota"
        view.update()
        time.sleep(POLL_SECONDS)
    return "exit"


# ---- process groups ---------------------------------------------------------------------------


def _group_members(pgid: int) -> list[tuple[int, str, int]]:
    """(pid, state, ppid) of every process in session-and-group `pgid` (our runs are both)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        state, ppid, group, session = stat.rsplit(")", 1)[1].split()[:4]
        if int(group) == pgid and int(session) == pgid:
            members.append((int(entry.name), state, int(ppid)))
    return members


def _runs_in(pgid: int, directory: Path) -> bool:
    """Whether a live member of group `pgid` has `directory` as its working directory."""
    for pid, state, _ in _group_members(pgid):
        with suppress(OSError):
            if state not in "ZX" and Path(f"/proc/{pid}/cwd").resolve() == directory.resolve():
                return True
    return False


def _group_alive(pgid: int) -> bool:
    if not Path("/proc/self/stat").exists():  # no procfs: zombies count as alive, still safe
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    return any(state not in "ZX" for _, state, _ in _group_members(pgid))


def _kill_group(pgid: int, grace_seconds: float) -> None:
    """SIGTERM the group, give it `grace_seconds` to exit, then SIGKILL whatever is left."""
    if not _group_alive(pgid):
        return
    try:
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:  # a second Ctrl-C during the grace period still ends in SIGKILL
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def _reap_group(pgid: int) -> None:
    """Reap the group's orphans that were reparented to us (see _adopting_orphans)."""
    if not Path("/proc/self/stat").exists():
        return
    deadline = time.monotonic() + 2.0  # SIGKILLed processes take a moment to become zombies
    while (members := _group_members(pgid)) and time.monotonic() < deadline:
        for pid, state, ppid in members:
            if state == "Z" and ppid == os.getpid():
                with suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)


@contextmanager
def _adopting_orphans() -> Iterator[None]:
    """While a run is live, become the subreaper of its orphaned grandchildren, so that they
    can be reaped here even where PID 1 reaps nothing (containers) and leave no zombies."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    if libc:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        if libc:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


# ---- output -----------------------------------------------------------------------------------


class _Ring:
    """The last `limit` bytes written, in at most 1.25 * limit + one chunk of memory."""

    def __init__(self, limit: int):
        self.limit, self.dropped, self._buf = limit, 0, bytearray()
        self._slack = max(limit // 4, CHUNK_BYTES)  # trim in steps: each trim copies `limit`

    def add(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self.limit + self._slack:
            self._trim()

    def _trim(self) -> None:
        excess = max(0, len(self._buf) - self.limit)
        self.dropped += excess
        del self._buf[:excess]

    def value(self) -> memoryview:
        self._trim()
        return memoryview(self._buf)


def _clean_tail(ring: _Ring, redactor: Redactor) -> str:
    """A stream's tail without secrets; a first line the ring cut is dropped, since a secret
    cut in two is no longer recognisable."""
    data = ring.value().tobytes()
    if ring.dropped and b"\n" in data:
        data = data.split(b"\n", 1)[1]
    return redactor.scrub(data)[0].decode("utf-8", errors="replace")


class _CappedLog:
    """log.txt holding the first `half` bytes (written as they come) and the last `half`
    (kept in memory, written at close) with a note of what was cut in between; whatever is
    written is scrubbed of secrets first (callers write whole lines, so no secret is split)."""

    def __init__(self, path: Path, half: int, redactor: Redactor):
        self._file = safefs.open_write(path.parent, path.name)  # a run dir's: never via a link
        self._room = half
        self._tail = _Ring(half)
        self._lock = threading.Lock()
        self._redactor = redactor
        self.redacted = 0  # secrets replaced

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._file.closed:  # a straggler that outlived the run's pipes: nothing to keep
                return
            data, count = self._redactor.scrub(data)
            self.redacted += count
            if self._room > 0:
                head, data = data[: self._room], data[self._room :]
                self._file.write(head)
                self._room -= len(head)
                if data:
                    self._file.write(
                        b"\n[runner: log.txt is full; the last part of the output is "
                        b"written when the run ends]\n"
                    )
                self._file.flush()
            if data:
                self._tail.add(data)

    def close(self) -> None:
        with self._lock:
            tail = self._tail.value()
            if self._tail.dropped:
                self._file.write(f"\n[runner: {self._tail.dropped} bytes cut here]\n".encode())
            self._file.write(tail)
            self._file.close()


def _pump(stream: IO[bytes], sink: _CappedLog, tail: _Ring, lines: deque[str]) -> None:
    """Copy one child stream into the log line by line (so stdout and stderr interleave by
    whole lines), keeping its tail and the last lines for the live view."""
    pending = b""
    fd = stream.fileno()
    while chunk := os.read(fd, CHUNK_BYTES):
        tail.add(chunk)
        complete, newline, pending = (pending + chunk).rpartition(b"\n")
        if newline:
            sink.write(complete + newline)
            shown = complete[-LIVE_LINES * 400 :].splitlines()[-LIVE_LINES:]
            lines.extend(line.decode("utf-8", errors="replace")[:200] for line in shown)
        if len(pending) > MAX_PARTIAL_LINE:
            sink.write(pending)
            pending = b""
    if pending:
        sink.write(pending + b"\n")
    stream.close()


class _View:
    """Live panel on a terminal; start, heartbeat and end lines otherwise; nothing if not live."""

    def __init__(self, console: Console, title: str, timeout: float, log_path: Path, live: bool):
        self.console, self.title, self.timeout, self.log_path = console, title, timeout, log_path
        self.lines: deque[str] = deque(maxlen=LIVE_LINES)
        self.mode = ("live" if console.is_terminal else "plain") if live else "quiet"
        self._start = time.monotonic()
        self._last_beat = self._start
        self._live: Live | None = None

    def __enter__(self) -> _View:
        self._start = self._last_beat = time.monotonic()
        if self.mode == "live":
            self._live = Live(self._render(), console=self.console, refresh_per_second=4)
            self._live.__enter__()
        elif self.mode == "plain":
            self.console.print(
                f"[bold]{self.title}[/] started (timeout {self.timeout:.0f} s, log {self.log_path})"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self._live.__exit__(None, None, None)

    def update(self) -> None:
        now = time.monotonic()
        if self._live:
            self._live.update(self._render())
        elif self.mode == "plain" and now - self._last_beat >= HEARTBEAT_SECONDS:
            self._last_beat = now
            last = self.lines[-1] if self.lines else ""
            self.console.print(f"{self.title}: {now - self._start:.0f} s  {last}", markup=False)

    def report(self, result: RunResult) -> None:
        if result.timed_out:
            status = "timed out"
        elif result.over_quota:
            status = "killed: run directory over its size cap"
        elif result.over_memory:
            status = result.memory_verdict()
        else:
            status = "ok" if result.ok else f"failed (exit {result.returncode})"
        text = f"{self.title}: {status} after {result.seconds:.1f} s, log {result.log_path}"
        if self.mode == "quiet":
            log.info(text)
        else:
            self.console.print(text, markup=False)

    def _render(self) -> Panel:
        elapsed = time.monotonic() - self._start
        body = Text("\n".join(self.lines) or "(no output yet)", overflow="ellipsis", no_wrap=True)
        header = Text(f"{elapsed:.0f} s / {self.timeout:.0f} s   log: {self.log_path}", "dim")
        return Panel(Group(header, body), title=self.title, title_align="left")
