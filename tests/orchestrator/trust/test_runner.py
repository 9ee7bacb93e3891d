"""runner.py: process groups, timeouts, Ctrl-C, scrubbed environment, bounded output."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.trust.runner import (
    LOG_LIMIT_BYTES,
    PID_FILE,
    run_command,
    run_experiment,
    scrubbed_env,
)
from orchestrator.trust.sandbox import dies_with_parent, probe
from tests.orchestrator.helpers import (
    REPO,
    alive,
    argv,
    core_spec,
    core_write_template,
    descendants,
    wait_for,
)

# A group leader that leaves a background grandchild: both must die.
SLEEPER = "echo $$ > {pids}; sleep 60 & echo $! >> {pids}; echo started; wait"


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_for_lines(path: Path, count: int, seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and len(lines := path.read_text().split()) >= count:
            return [int(x) for x in lines]
        time.sleep(0.02)
    raise AssertionError(f"{path} never got {count} lines")


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def test_timeout_kills_the_whole_group_and_leaves_no_process(tmp_path):
    pids = tmp_path / "pids"
    start = time.monotonic()
    result = run_command(
        ["sh", "-c", SLEEPER.format(pids=pids)],
        cwd=tmp_path,
        log_path=tmp_path / "log.txt",
        timeout=1.0,
        live=False,
        grace_seconds=1.0,
    )
    assert result.timed_out and not result.ok
    assert result.returncode == -signal.SIGTERM
    assert time.monotonic() - start < 5
    leader, grandchild = _wait_for_lines(pids, 2)
    assert result.pgid == leader
    assert _group_gone(leader)
    with pytest.raises(ProcessLookupError):
        os.kill(grandchild, 0)
    log = (tmp_path / "log.txt").read_text()
    assert "started" in log and "killed after the 1 s timeout" in log


def test_sigkill_follows_when_sigterm_is_ignored(tmp_path):
    result = run_command(
        ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"],
        cwd=tmp_path,
        log_path=tmp_path / "log.txt",
        timeout=0.5,
        live=False,
        grace_seconds=0.5,
    )
    assert result.timed_out
    assert _group_gone(result.pgid)


def test_background_process_left_after_a_normal_exit_is_killed(tmp_path):
    pids = tmp_path / "pids"
    script = f"echo $$ > {pids}; sleep 60 & echo $! >> {pids}; echo done"
    result = run_command(
        ["sh", "-c", script], tmp_path, tmp_path / "log.txt", timeout=10, live=False
    )
    assert result.ok and result.stdout_tail == "done\n"
    assert _group_gone(result.pgid)


def test_ctrl_c_in_the_orchestrator_kills_the_child_group(tmp_path):
    pids = tmp_path / "pids"
    orchestrator = (
        "import sys\n"
        "from pathlib import Path\n"
        "from orchestrator.trust.runner import run_command\n"
        "run_command(['sh', '-c', sys.argv[1]], Path(sys.argv[2]), Path(sys.argv[2]) / 'log.txt',"
        " timeout=60, live=False, grace_seconds=1)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", orchestrator, SLEEPER.format(pids=pids), str(tmp_path)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        # a shell that started us in the background (nohup cmd &) ignores SIGINT, and Python
        # keeps an ignored SIGINT ignored: give the child the default so Ctrl-C is Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    leader, grandchild = _wait_for_lines(pids, 2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=20)
    assert "KeyboardInterrupt" in stderr
    assert _group_gone(leader)
    with pytest.raises(ProcessLookupError):
        os.kill(grandchild, 0)


# An orchestrator that runs one sandboxed command (argv[1], a JSON list) in argv[2], as the
# loop does; `namespaces` 0 stands for a machine without them.
SANDBOXED = """
import json, sys
from pathlib import Path
from orchestrator.trust.runner import run_command
from orchestrator.trust.sandbox import Box, Protections, probe
where, namespaces = Path(sys.argv[2]), sys.argv[3] == "1"
box = Box([where], protections=Protections(probe().landlock_abi, namespaces))
run_command(box.wrap(json.loads(sys.argv[1])), where, where / "log.txt", 60, live=False)
"""
# a setsid daemon and a background child, then the shell waits: the whole tree must go
NAP = ["-c", "import time; time.sleep(60)"]
TREE = ["sh", "-c", f"setsid sleep 60 & sleep 60 & exec python3 {shlex.join(NAP)}"]


def _started(root: int, args: list[str]) -> list[int]:
    """The processes below `root` run with `args` (after the program, which PATH may expand)."""
    return [pid for pid in descendants(root) if argv(pid)[1 : len(args) + 1] == args]


@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "no-namespaces"])
def test_sigkill_of_the_orchestrator_ends_its_sandboxed_run(tmp_path, namespaces):
    if namespaces and not probe().namespaces:
        pytest.skip("no user/PID namespaces on this machine")
    # without namespaces only the chain the orchestrator started dies with it (README)
    command = TREE if namespaces else ["python3", *NAP]
    orchestrator = subprocess.Popen(
        [sys.executable, "-c", SANDBOXED, json.dumps(command), str(tmp_path), str(int(namespaces))],
        cwd=REPO,
    )
    try:
        wait_for(lambda: _started(orchestrator.pid, NAP), 30)
        time.sleep(0.2)  # the shell's other children
        tree = descendants(orchestrator.pid)
        assert len(tree) >= (5 if namespaces else 2), [argv(p) for p in tree]
    finally:
        orchestrator.kill()  # SIGKILL: no cleanup of any kind
        orchestrator.wait()
    start = time.monotonic()
    try:
        wait_for(lambda: not alive(tree), 2.0)
    finally:  # a failure leaves no sleeper behind
        for pid in alive(tree):
            os.kill(pid, signal.SIGKILL)
    print(f"{len(tree)} processes gone {time.monotonic() - start:.3f} s after the SIGKILL")


def test_a_child_whose_parent_died_before_it_was_armed_ends_itself(monkeypatch):
    assert subprocess.Popen(["true"], preexec_fn=dies_with_parent()).wait(timeout=10) == 0
    with monkeypatch.context() as patch:
        patch.setattr(os, "getpid", lambda: 0)  # the child will see another parent than this
        orphaned = dies_with_parent()
    child = subprocess.Popen(["sleep", "30"], preexec_fn=orphaned)
    assert child.wait(timeout=10) == -signal.SIGKILL


def test_llm_credentials_are_not_visible_to_the_child(tmp_path, monkeypatch):
    secrets = {
        "OPENAI_API_KEY": "sk-secret-openai",
        "ANTHROPIC_API_KEY": "sk-secret-anthropic",
        "OPENAI_API_BASE": "http://127.0.0.1:9/v1",
        "MYPROVIDER_API_KEY": "sk-secret-other",
        "AIDER_MODEL": "secret-model",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SAELAB_CACHE", "/tmp/kept-cache")
    monkeypatch.setenv("PYTHONUNBUFFERED", "0")
    code = "import os; print(sorted(os.environ.items()))"
    result = run_command(
        [sys.executable, "-c", code], tmp_path, tmp_path / "log.txt", timeout=20, live=False
    )
    seen = result.stdout_tail + (tmp_path / "log.txt").read_text()
    assert result.ok
    for name, value in secrets.items():
        assert name not in seen and value not in seen
    assert "('SAELAB_CACHE', '/tmp/kept-cache')" in seen
    assert "('PYTHONUNBUFFERED', '1')" in seen
    assert scrubbed_env({"HF_TOKEN": "hf_x", "GEMINI_API_KEY": "g"}) == {"HF_TOKEN": "hf_x"}


def test_huge_output_keeps_memory_and_log_bounded(tmp_path):
    limit = LOG_LIMIT_BYTES  # the default, as the loop runs it
    code = (
        "import sys\n"
        "line = 'x' * 1023 + '\\n'\n"
        "for i in range(200 * 1024):\n"  # 200 MiB
        "    sys.stdout.write(line)\n"
        "sys.stderr.write('the last words\\n')\n"
        "print('END OF OUTPUT')\n"
    )
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
    rss_before = _vm_kib("VmRSS")
    result = run_command(
        [sys.executable, "-c", code],
        tmp_path,
        tmp_path / "log.txt",
        timeout=60,
        live=False,
    )
    growth_mib = (_vm_kib("VmHWM") - rss_before) / 1024
    assert result.ok
    assert growth_mib < 50, f"orchestrator RSS grew by {growth_mib:.0f} MiB"
    log = (tmp_path / "log.txt").read_bytes()
    assert len(log) < limit + 1024
    assert b"bytes cut here" in log
    # stderr may land anywhere in the stdout flood (two pipes race): its tail keeps it
    assert b"\nEND OF OUTPUT\n" in log[-100:]
    assert result.stdout_tail.endswith("END OF OUTPUT\n") and len(result.stdout_tail) <= 4096
    assert result.stderr_tail == "the last words\n"


def test_a_command_that_cannot_start_is_a_failed_result(tmp_path):
    result = run_command(
        [str(tmp_path / "missing-binary")], tmp_path, tmp_path / "log.txt", timeout=5, live=False
    )
    assert result.returncode is None and not result.ok
    assert "could not start" in result.stderr_tail


EXPERIMENT = """\
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--out_dir")
out = parser.parse_args().out_dir
os.makedirs(out, exist_ok=True)
print("training", flush=True)
print("a warning", file=sys.stderr)
with open(os.path.join(out, "final_info.json"), "w") as f:
    json.dump({"training_steps": 3, "cwd": os.getcwd()}, f)
"""


def test_run_experiment_substitutes_and_replaces_a_stale_run_dir(tmp_path):
    workspace = core_write_template(tmp_path, experiment=EXPERIMENT)
    spec = core_spec(workspace)
    stale = workspace / "run_1"
    stale.mkdir()
    (stale / "final_info.json").write_text('{"stale": true}')
    (stale / "leftover.txt").write_text("from a failed try")
    squatter = subprocess.Popen(["sleep", "60"], cwd=workspace, start_new_session=True)
    (stale / PID_FILE).write_text(str(squatter.pid))  # an orphan of a killed orchestrator

    result = run_experiment(workspace, spec, "run_1", live=False)

    assert squatter.wait(timeout=10) == -signal.SIGTERM
    assert result.ok, result.stderr_tail
    assert result.log_path == workspace / "run_1" / "log.txt"
    log = result.log_path.read_text()
    assert f"{sys.executable} experiment.py --out_dir=run_1" in log
    assert "training" in log and "a warning" in log
    assert not (workspace / "run_1" / "leftover.txt").exists()
    assert not (workspace / "run_1" / PID_FILE).exists()
    assert '"cwd": "' + str(workspace) in (workspace / "run_1" / "final_info.json").read_text()


def test_run_experiment_rejects_a_path_as_run_name(tmp_path):
    spec = core_spec(tmp_path)
    with pytest.raises(ValueError, match="plain directory name"):
        run_experiment(tmp_path, spec, "../elsewhere", live=False)


def test_a_stale_pid_file_never_kills_a_process_elsewhere(tmp_path):
    workspace = core_write_template(tmp_path / "ws", experiment=EXPERIMENT)
    stranger = subprocess.Popen(["sleep", "60"], cwd=tmp_path, start_new_session=True)
    try:
        (workspace / "run_1").mkdir()
        (workspace / "run_1" / PID_FILE).write_text(str(stranger.pid))
        assert run_experiment(workspace, core_spec(workspace), "run_1", live=False).ok
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
