"""The sandbox agent code runs in: it may write only its run directory and a private temp dir,
reaches no network, sees no other process, and leaves nothing running.

    command = Box(writable=[run_dir, tmp], cache=(cache_root, scratch)).wrap(["python", ...])

Two kernel features, no root and nothing to install (Linux):
- namespaces, through util-linux `unshare`: a user namespace (so no privileges are needed), a
  PID namespace with its own /proc (the run sees only itself: no /proc/<parent>/environ to read
  secrets from, no pid to signal; when its first process exits the kernel kills every process
  left in it, setsid daemons and double forks included), a network namespace with no interface
  up (unless the template opts in), and a mount namespace in which the lab cache is an overlay:
  reads come from the shared cache, writes land in a workspace-local scratch dir, so a run that
  builds an activation cache of its own never touches the cache the referee trusts;
- Landlock (applied by this module's `main`, run as the namespace's first process): read only
  an allow-list (system files, the interpreters, the project's code, the dirs the caller names:
  never the user's home or the lab's sealed evaluation data unless named), write only the
  given dirs, no TCP bind/connect, no signals or abstract sockets outside the sandbox (ABI 6+);
- a memory cap (RLIMIT_DATA: torch reserves far more address space than it touches, so
  RLIMIT_AS would stop it at import) per process.
Measured here (kernel 6.18, Landlock ABI 7): the wrapper costs ~0.1 s a run. `probe()` says
which protections this machine offers; the runner journals it and the console says what is
missing (macOS, an old kernel, a container that forbids user namespaces).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

# Landlock (include/uapi/linux/landlock.h); x86_64 and arm64 share the syscall numbers.
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
# write-side rights by the ABI that introduced them: 1 (remove dir .. make sym), 2 refer,
# 3 truncate; IOCTL_DEV (5) is left unhandled: it only matters for device files
FS_WRITE_BY_ABI = {1: FS_WRITE_FILE | sum(1 << b for b in range(4, 13)), 2: 1 << 13, 3: 1 << 14}
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
GPU_DEVICES = "nvidia*"  # under /dev; CUDA opens them read-write (not measured here: no GPU)
# read by any interpreter and its libraries (ld.so, libc, locales, certificates, CPU topology);
# /proc is the PID namespace's own: the run's processes alone
SYSTEM_READS = (
    "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc", "/proc", "/sys",
)  # fmt: skip
MEMORY_HEADROOM = 4 * 2**30  # what the default memory cap leaves the orchestrator and the OS

SANDBOX_ENV = (  # what agent code may see of the orchestrator's environment
    "PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE",
    "HF_HOME", "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "SAELAB_CACHE",
)  # fmt: skip
NETWORK_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")


class SandboxError(RuntimeError):
    """The sandbox is required but this machine cannot provide it; the message says what."""


@dataclass(frozen=True)
class Protections:
    landlock_abi: int  # 0: no Landlock
    namespaces: bool  # unshare of user, pid, mount and network namespaces works

    def missing(self) -> list[str]:
        gaps = []
        if self.landlock_abi < 1:
            gaps.append(
                "Landlock (agent code can write outside its run directory and read everywhere: "
                "the user's files and the lab's sealed evaluation data)"
            )
        elif self.landlock_abi < 6:
            gaps.append(f"Landlock ABI {self.landlock_abi} < 6 (no signal scoping)")
        if not self.namespaces:
            gaps.append(
                "user/PID/network namespaces (agent code can read other processes' "
                "environment, reach the network and outlive its run)"
            )
        return gaps

    def summary(self) -> str:
        if not self.missing():
            return f"sandbox active: Landlock ABI {self.landlock_abi}, PID/net/mount namespaces"
        return "sandbox INCOMPLETE, missing: " + "; ".join(self.missing())


@cache
def probe() -> Protections:
    """What this machine offers (asked once per process)."""
    return Protections(_landlock_abi(), _namespaces_work())


def _landlock_abi() -> int:
    if not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), CREATE_RULESET_VERSION)
    return max(abi, 0)


def _namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        probe_cmd = [*_unshare(network=False), "true"]
        return subprocess.run(probe_cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _unshare(network: bool) -> list[str]:
    flags = ["--user", "--map-root-user", "--mount", "--pid", "--fork", "--kill-child"]
    return ["unshare", *flags, "--mount-proc", *([] if network else ["--net"])]


def dies_with_parent() -> Callable[[], None] | None:
    """A Popen `preexec_fn`: the child is SIGKILLed when the thread that started it ends, however
    the orchestrator dies (kill -9 included). On `unshare --kill-child` that takes the whole PID
    namespace down. Popen and its wait must run in the same thread (the kernel's "parent" is the
    thread). None off Linux, which has no parent-death signal."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # found here: the forked child loads nothing
    parent, sigkill = os.getpid(), int(signal.SIGKILL)

    def arm() -> None:
        if prctl(PR_SET_PDEATHSIG, sigkill, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died between fork and prctl: nobody to signal us
            signal.raise_signal(sigkill)

    return arm


def sandbox_env(home: Path, network: bool, base: dict[str, str] | None = None) -> dict[str, str]:
    """An allow-list of the orchestrator's environment, with HOME and TMPDIR private."""
    source = os.environ if base is None else base
    names = SANDBOX_ENV + (NETWORK_ENV if network else ())
    env = {name: source[name] for name in names if name in source}
    private = {"HOME": str(home), "TMPDIR": str(home), "MPLCONFIGDIR": str(home / "matplotlib")}
    return env | private | {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def default_memory_cap() -> int:
    """Bytes agent code may allocate when the template names no cap: 60% of physical memory,
    leaving the orchestrator and the OS MEMORY_HEADROOM (half the memory on a small machine)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(max(min(0.6 * total, total - MEMORY_HEADROOM), total / 2))


def interpreter_dirs(python: str) -> list[Path]:
    """What running `python` reads: its venv (unresolved: a venv's python may be a link) and
    the installation the venv was made from (pyvenv.cfg's `home`, e.g. under ~/.pyenv)."""
    venv = Path(python).absolute().parent.parent
    config = venv / "pyvenv.cfg"
    lines = config.read_text().splitlines() if config.is_file() else []
    homes = [line.split("=", 1)[1].strip() for line in lines if line.startswith("home")]
    if not homes:  # not a venv: the installation the interpreter lives in
        return [Path(os.path.realpath(python)).parent.parent]
    return [venv, Path(homes[0]).resolve().parent]


@dataclass(frozen=True)
class Box:
    """One sandboxed command's rules."""

    writable: list[Path]
    network: bool = False
    cache: tuple[Path, Path] | None = None  # (shared cache root, scratch dir for its writes)
    max_bytes: int = 8 * 2**30  # the run dir (and any one file) may not grow past this
    readable: list[Path] = field(default_factory=list)  # besides system files and interpreter
    max_memory: int | None = None  # bytes each process may allocate (RLIMIT_DATA)
    protections: Protections = field(default_factory=probe)

    def wrap(self, command: list[str]) -> list[str]:
        """`command` run inside the sandbox (as far as this machine allows)."""
        # this very file, isolated (-I): nothing in the run's cwd can stand in for it
        inner = [sys.executable, "-I", str(Path(__file__).resolve()), "--max-bytes"]
        inner.append(str(self.max_bytes))
        for path in self.writable:
            inner += ["--write", str(path)]
        for path in [*SYSTEM_READS, *interpreter_dirs(sys.executable), *self.readable]:
            inner += ["--read", str(path)]
        if self.max_memory:
            inner += ["--max-memory", str(self.max_memory)]
        if self.protections.landlock_abi < 1:
            inner.append("--no-landlock")
        if self.network:
            inner.append("--network")
        if self.cache and self.protections.namespaces:
            shared, scratch = self.cache
            inner += ["--overlay", f"{shared}:{scratch}"]
        elif self.cache:  # no mount namespace: the shared cache must stay writable
            inner += ["--write", str(self.cache[0])]
        outer = _unshare(self.network) if self.protections.namespaces else []
        return [*outer, *inner, "--", *command]


# ---- inside the sandbox: the namespace's first process ------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="apply the sandbox, then run a command")
    parser.add_argument("--write", action="append", default=[], type=Path)
    parser.add_argument("--read", action="append", default=[], type=Path)
    parser.add_argument("--max-memory", type=int, default=None, help="bytes (RLIMIT_DATA)")
    parser.add_argument("--overlay", default=None, help="SHARED:SCRATCH")
    parser.add_argument("--max-bytes", type=int, required=True)
    parser.add_argument("--network", action="store_true")
    parser.add_argument("--no-landlock", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    writable = list(args.write)
    if args.overlay:
        shared, scratch = (Path(p) for p in args.overlay.split(":", 1))
        _mount_overlay(shared, scratch)
        writable.append(shared)
    resource.setrlimit(resource.RLIMIT_FSIZE, (args.max_bytes, args.max_bytes))
    if args.max_memory:
        resource.setrlimit(resource.RLIMIT_DATA, (args.max_memory, args.max_memory))
    if not args.no_landlock:
        _landlock(args.read, writable, network=args.network)
    return _init(command)


def _mount_overlay(shared: Path, scratch: Path) -> None:
    """The shared cache, read through; writes go to scratch/upper (this namespace only)."""
    upper, work = scratch / "upper", scratch / "work"
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={shared},upperdir={upper},workdir={work}".encode()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"overlay", str(shared).encode(), b"overlay", 0, options) != 0:
        raise OSError(ctypes.get_errno(), f"cannot mount the cache overlay on {shared}")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def _landlock(readable: list[Path], writable: list[Path], network: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    abi = _landlock_abi()
    write = sum(bits for version, bits in FS_WRITE_BY_ABI.items() if version <= abi)
    net = 0 if network or abi < 4 else NET_BIND_TCP | NET_CONNECT_TCP
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = _RulesetAttr(FS_READ | write, net, scoped)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    file_write = FS_WRITE_FILE | (FS_WRITE_BY_ABI[3] if abi >= 3 else 0)
    devices = [Path(d) for d in DEVICES] + sorted(Path("/dev").glob(GPU_DEVICES))
    rules = [(path, FS_READ) for path in readable]
    rules += [(path, FS_READ_FILE | file_write) for path in devices]
    rules += [(path, FS_READ | write) for path in writable]
    for path, allowed in rules:
        if not path.exists():  # e.g. /lib32, or a cache not built yet
            continue
        if not path.is_dir():  # a file takes file rights only (EINVAL otherwise)
            allowed &= FS_EXECUTE | FS_READ_FILE | file_write
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = _PathBeneath(allowed, fd)
        if libc.syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
        os.close(fd)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS) failed")
    if libc.syscall(SYS_RESTRICT_SELF, ruleset, 0) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    os.close(ruleset)


def _init(command: list[str]) -> int:
    """Run `command` as our child, pass on SIGTERM/SIGINT, reap orphans, return its status.
    (The first process of a PID namespace gets no default signal actions, so it must relay.)"""
    # where there are no namespaces, the command must not outlive this process either
    child = subprocess.Popen(command, preexec_fn=dies_with_parent())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _frame: child.send_signal(number))
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return child.returncode or 0
        except InterruptedError:
            continue
        if pid == child.pid:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
