"""Mutation testing by hand: break one guard at a time, in a copy of the repo, and run the tests
that should notice.

    .venvs/orch/bin/python benchmarks/mutations.py                 # all of them (~9 min, 2 cores)
    .venvs/orch/bin/python benchmarks/mutations.py --list
    .venvs/orch/bin/python benchmarks/mutations.py loop_progress journal_fsync

Each mutation replaces one exact snippet of one file with a broken version in a fresh copy of
the tree (the real files are never touched) and runs its test selection there, each test file
under its own venv. caught: a test failed or the tests hung past the timeout; survived: every
test passed, so nothing notices the guard is gone (write the test that does); stale: the
snippet is no longer in the file exactly once (update the entry); error: the tests could not
run (a broken mutation). First the unmutated copy must pass every selected test.
Adding a guard is one line in MUTATIONS; docs/mutations.md keeps the latest score.
"""

# ruff: noqa: E501  (the mutation table keeps one mutation a line)

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
VENV_OF = {"tests/lab": ".venvs/lab/bin/python", "tests/orchestrator": ".venvs/orch/bin/python"}
COPY_IGNORE = (".git", ".venvs", "results", "__pycache__", ".pytest_cache", ".ruff_cache")
PYTEST = ("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider")
TIMEOUT = 180.0  # seconds per test run; a hang counts as caught (e.g. no SIGKILL after SIGTERM)

console = Console(width=160)  # the table is wider than a log's default 80 columns


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repo root
    original: str  # must occur exactly once in the file
    mutated: str
    guard: str  # what the mutation breaks
    tests: tuple[str, ...]  # test files or node ids that must notice


# ---- test selections -------------------------------------------------------------------------

T = "tests/orchestrator/"
E2E = T + "test_loop_e2e.py::"
VALIDATE = (T + "trust/test_validate.py", T + "trust/test_template_rules.py")
RUNNER = (T + "trust/test_runner.py",)
WORKSPACE = (
    T + "trust/test_workspace.py",
    E2E + "test_protected_file_edit_is_reverted_and_agent_told",
)
JUDGE = (T + "trust/test_judge.py",)
JOURNAL = (T + "test_journal.py",)
GUARDS = T + "test_guards.py::"
SEALED = T + "trust/test_sealed.py::"
REPORT = (T + "report/test_report.py",)
EVALS = "tests/lab/test_evals.py::"
LINKS = T + "trust/test_links.py::"

# fmt: off
MUTATIONS = [
    # validate.py: the rule ops, NaN, the schema
    Mutation("gt_is_ge", "orchestrator/trust/validate.py", '">": operator.gt,', '">": operator.ge,', "'>' is strict (0 steps fail 'training_steps > 0')", VALIDATE),
    Mutation("ge_is_gt", "orchestrator/trust/validate.py", '">=": operator.ge,', '">=": operator.gt,', "'>=' passes on its threshold", VALIDATE),
    Mutation("lt_is_le", "orchestrator/trust/validate.py", '"<": operator.lt,', '"<": operator.le,', "'<' is strict", VALIDATE),
    Mutation("le_is_lt", "orchestrator/trust/validate.py", '"<=": operator.le,', '"<=": operator.lt,', "'<=' passes on its threshold", VALIDATE),
    Mutation("eq_is_ge", "orchestrator/trust/validate.py", '"==": operator.eq,', '"==": operator.ge,', "'==' means equal", VALIDATE),
    Mutation("nan_compares", "orchestrator/trust/validate.py", "    if _is_number(value) and not math.isfinite(value):\n        return _problem(rule, _short(value))\n", "", "NaN and inf fail every comparison", VALIDATE),
    Mutation("finite_is_number", "orchestrator/trust/validate.py", '(rule.op == "finite" and _is_number(value) and math.isfinite(value))', '(rule.op == "finite" and _is_number(value))', "'finite' rejects NaN and inf", VALIDATE),
    Mutation("schema_unchecked", "orchestrator/trust/validate.py", 'if any(TYPE_CHECKS[k](value) for k in kind.split("|")):', "if True:", "schema types are checked", VALIDATE),
    Mutation("bool_is_number", "orchestrator/trust/validate.py", "return isinstance(value, (int, float)) and not isinstance(value, bool)", "return isinstance(value, (int, float))", "a bool is not a number", VALIDATE),
    # runner.py: process group, timeout, output cap, secrets, stale runs
    Mutation("no_session", "orchestrator/trust/runner.py", "start_new_session=True,", "start_new_session=False,", "the run gets its own process group", RUNNER),
    Mutation("no_group_kill", "orchestrator/trust/runner.py", "        _kill_group(proc.pid, grace_seconds)\n", "", "the whole group is killed at exit, timeout, Ctrl-C", RUNNER),
    Mutation("no_sigkill", "orchestrator/trust/runner.py", "            os.killpg(pgid, signal.SIGKILL)", "            pass", "SIGKILL follows an ignored SIGTERM", RUNNER),
    Mutation("no_timeout", "orchestrator/trust/runner.py", "        if now >= deadline:\n            return \"timeout\"", "        if False:\n            return \"timeout\"", "the timeout ends the run", RUNNER),
    Mutation("log_uncapped", "orchestrator/trust/runner.py", "head, data = data[: self._room], data[self._room :]", 'head, data = data, b""', "log.txt is capped", RUNNER),
    Mutation("secrets_kept", "orchestrator/trust/runner.py", 'env=scrubbed_env(env) | {"PYTHONUNBUFFERED": "1"},', 'env=dict(env or os.environ) | {"PYTHONUNBUFFERED": "1"},', "LLM keys never reach the experiment", RUNNER),
    Mutation("stale_run_lives", "orchestrator/trust/runner.py", "                _kill_group(pgid, GRACE_SECONDS)", "                pass", "a resume kills the run a kill -9 orphaned", RUNNER),
    Mutation("stranger_killed", "orchestrator/trust/runner.py", "            if _runs_in(pgid, workspace):", "            if True:", "a stale pid file never kills a stranger", RUNNER),
    Mutation("orphans_live", "orchestrator/trust/runner.py", "                preexec_fn=dies_with_parent(),  # nothing outlives the orchestrator, kill -9 too\n", "", "nothing the runner starts outlives the orchestrator (kill -9)", (T + "trust/test_runner.py::test_sigkill_of_the_orchestrator_ends_its_sandboxed_run",)),
    Mutation("init_orphans_live", "orchestrator/trust/sandbox.py", "child = subprocess.Popen(command, preexec_fn=dies_with_parent())", "child = subprocess.Popen(command)", "without namespaces, the command dies with the sandbox's first process", (T + "trust/test_runner.py::test_sigkill_of_the_orchestrator_ends_its_sandboxed_run",)),
    Mutation("early_orphan_lives", "orchestrator/trust/sandbox.py", "        if os.getppid() != parent:", "        if False:", "a child whose parent died before the signal was armed ends itself", (T + "trust/test_runner.py::test_a_child_whose_parent_died_before_it_was_armed_ends_itself",)),
    # workspace.py: the protected-file manifest and its revert
    Mutation("no_restore", "orchestrator/trust/workspace.py", '            self.repo.git.checkout(self.pristine, "--", *restore)', "            pass", "changed protected files are restored", WORKSPACE),
    Mutation("no_hash_check", "orchestrator/trust/workspace.py", "            elif _sha256(full) != digest:", "            elif False:", "a changed protected file is noticed", WORKSPACE),
    Mutation("added_kept", "orchestrator/trust/workspace.py", "            (self.root / path).unlink(missing_ok=True)", "            pass", "files the agent adds are deleted", WORKSPACE),
    Mutation("baseline_unprotected", "orchestrator/trust/workspace.py", "files = _tree_files(root, skip_runs=False)", "files = _tree_files(root)", "the baseline run is protected", WORKSPACE),
    # journal.py
    Mutation("journal_fsync", "orchestrator/journal.py", "            f.flush()\n            os.fsync(f.fileno())\n", "", "each entry is on disk before append returns", JOURNAL),
    Mutation("torn_line_glued", "orchestrator/journal.py", '            if f.read(1) != b"\\n":', "            if False:", "a torn last line is sealed before appending", JOURNAL),
    # session.py and loop.py
    Mutation("no_baseline_gate", "orchestrator/session.py", "    baseline_gate(spec)\n", "", "a missing or invalid run_0 stops the loop", (GUARDS + "test_a_bad_baseline_stops_the_loop_with_one_line_and_no_workspace",)),
    Mutation("loop_progress", "orchestrator/session.py", "    session.run_number = len(journal.passed_runs()) + 1", "    session.run_number = 1", "a resume continues after the runs that passed", (GUARDS + "test_resume_after_a_passed_run_continues_at_the_next_run",)),
    Mutation("replay_restarts", "orchestrator/session.py", "        return replace(choice, replay_responses=choice.replay_responses[used:])", "        return choice", "a resumed replay skips the replies already served", (GUARDS + "test_a_resumed_replay_equals_an_uninterrupted_one",)),
    Mutation("no_turn_guard", "orchestrator/loop.py", '    guard(session, "your last edit")\n', "", "protected edits are reverted after each turn", (E2E + "test_protected_file_edit_is_reverted_and_agent_told",)),
    Mutation("tamper_valid", "orchestrator/trust/judge.py", '        verdict.problems.append(f"the run changed protected files ({tampered})")', "        pass", "a run that wrote protected files is invalid", JUDGE),
    Mutation("invalid_is_ok", "orchestrator/loop.py", 'status, reason = ("ok", "") if verdict.ok else ("invalid", "INVALID result")', 'status, reason = ("ok", "")', "an invalid verdict is a failed run", (E2E + "test_zero_training_steps_is_invalid_and_run_number_stays",)),
    Mutation("no_iter_cap", "orchestrator/loop.py", "    if session.failures >= session.settings.max_iters:", "    if False:", "MAX_ITERS failures in a row end the loop", (E2E + "test_hang_is_killed_at_timeout_with_no_process_left",)),
    # report/records.py
    Mutation("no_claim_warning", "orchestrator/report/records.py", 'claims_success_but_failed=attempt.status != "ok" and claims_success(analysis),', "claims_success_but_failed=False,", "a success claimed by a failed run is flagged", REPORT),
    Mutation("negation_ignored", "orchestrator/report/records.py", "            if not any(_negates(w) for w in near):", "            if True:", "'did not succeed' is no success claim", REPORT),
    Mutation("replaced_from_disk", "orchestrator/report/records.py", "    from_journal = attempt.replaced or not (workspace / name).is_dir()", "    from_journal = not (workspace / name).is_dir()", "a replaced attempt shows the numbers it was judged on", REPORT),
    # saelab/evals
    Mutation("ev_against_zero", "saelab/evals/core.py", "    var = sum_x2 - 2 * (sum_x @ mean) + seq_len * mean.pow(2).sum()", "    var = sum_x2", "explained variance is measured against the data mean", (EVALS + "test_explained_variance_is_measured_against_the_data_mean",)),
    Mutation("l0_per_latent", "saelab/evals/core.py", '"sparsity": {"l0": l0.sum().item() / n_tok,', '"sparsity": {"l0": l0.sum().item() / n_tok / sae.d_sae,', "L0 counts active latents per token", (EVALS + "test_explained_variance_is_measured_against_the_data_mean",)),
    Mutation("dead_never", "saelab/evals/core.py", '"frac_dead_latents": _fraction(freq == 0),', '"frac_dead_latents": _fraction(freq < 0),', "latents that never fire are counted dead", (EVALS + "test_explained_variance_is_measured_against_the_data_mean",)),
    Mutation("ce_score_formula", "saelab/evals/core.py", '"ce_loss_score": (ce_zero - ce_sae).sum().item() / (ce_zero - ce_clean).sum().item(),', '"ce_loss_score": (ce_zero - ce_sae).sum().item() / ce_zero.sum().item(),', "CE-loss score is 1 for a perfect SAE, 0 for ablation", (EVALS + "test_ce_and_kl_scores_are_one_for_a_perfect_sae_and_zero_for_ablation",)),
    Mutation("decoder_lookahead", "saelab/evals/temporal.py", "    pairs = ((f_clean, f_noisy), (decode(sae, f_clean), decode(sae, f_noisy)))", "    pairs = ((f_clean, f_noisy),)", "a decoder that reads ahead is non-causal", (EVALS + "test_future_mixing_sae_is_flagged",)),
    # the referee and the sandbox (2026-12-01)
    Mutation("no_disagreement", "orchestrator/trust/validate.py", "problems = disagreements(result, measured, spec) if measured is not None else []", "problems = []", "a reported number the lab measured differently invalidates the run", (T + "trust/test_referee_loop.py",)),
    Mutation("no_copy_check", "orchestrator/trust/referee.py", "same = [name for name, other in earlier.items() if other == digest]", "same = []", "an artifact identical to an earlier one is not new work", (T + "trust/test_referee_loop.py",)),
    Mutation("landlock_writes_all", "orchestrator/trust/sandbox.py", "rules += [(path, FS_READ | write) for path in writable]", 'rules += [(Path("/"), FS_READ | write)]', "agent code writes only its run dir", (T + "trust/test_sandbox.py",)),
    Mutation("env_passthrough", "orchestrator/trust/sandbox.py", "env = {name: source[name] for name in names if name in source}", "env = dict(source)", "agent code sees an allow-listed environment", (T + "trust/test_sandbox.py",)),
    Mutation("no_code_check", "orchestrator/trust/judge.py", "    if code_digest(PROJECT) != code:", "    if False:", "a run measured by changed code is not VALID", JUDGE + (T + "trust/test_sandbox.py",)),
    Mutation("no_batch_purity", "saelab/referee.py", '"batch_independent": _batch_independent,', "", "the referee catches an SAE whose code mixes the batch", ("tests/lab/test_referee.py",)),
    Mutation("unpickling_referee", "saelab/referee.py", 'os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"', "pass", "a crafted artifact runs no code in the referee", ("tests/lab/test_referee.py",)),
    # sealed reads, redaction, memory cap (issue 19)
    Mutation("reads_everywhere", "orchestrator/trust/sandbox.py", "rules = [(path, FS_READ) for path in readable]", 'rules = [(Path("/"), FS_READ)]', "agent code reads neither the user's files nor the sealed tree", (SEALED + "test_a_credential_in_the_users_home_is_unreadable", SEALED + "test_the_sealed_tree_is_unreadable_and_the_agent_is_told")),
    Mutation("sealed_for_all", "orchestrator/trust/runner.py", "named = [*spec.readable, *(spec.referee_readable if sealed else [])]", "named = [*spec.readable, *spec.referee_readable]", "only the referee reads the lab's sealed data", (SEALED + "test_only_the_referee_reads_the_sealed_tree",)),
    Mutation("no_redaction", "orchestrator/trust/redact.py", "        return self.pattern.subn(MARK, data)", "        return data, 0", "secrets in agent output never reach a prompt, the journal or a log", (SEALED + "test_secrets_printed_by_the_run_are_redacted_and_journaled", SEALED + "test_result_file_strings_and_file_names_are_redacted")),
    Mutation("no_memory_cap", "orchestrator/trust/sandbox.py", "        resource.setrlimit(resource.RLIMIT_DATA, (args.max_memory, args.max_memory))", "        pass", "agent code stops at its memory cap", (SEALED + "test_a_memory_hog_is_stopped_at_its_cap_and_the_loop_goes_on",)),
    # findings and confirmation (issue 21)
    Mutation("rule_ignores_noise", "orchestrator/report/findings.py", "        low, high = self.difference - half, self.difference + half", "        low, high = self.difference, self.difference", "a difference inside both arms' seed noise decides nothing", (T + "report/test_findings.py",)),
    Mutation("no_confirmation", "orchestrator/confirm.py", "    plan = session.journal.confirmation() or _plan_confirmation(session, reason)", "    plan = None", "the best run is confirmed at more seeds", (T + "test_confirm.py::test_kill_during_a_confirmation_run_resumes_it",)),
    Mutation("confirm_restarts", "orchestrator/journal.py", '        return [s for s in self.plan.get("seeds") or [] if s not in finished]', '        return list(self.plan.get("seeds") or [])', "a resumed confirmation does not run a finished seed again", (T + "test_confirm.py::test_kill_during_a_confirmation_run_resumes_it",)),
    # no write through a planted link; disk caps (issue 19)
    Mutation("follow_links", "orchestrator/trust/safefs.py", "FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC", "FILE_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC", "the orchestrator writes, copies and reads no file through a planted symlink", (T + "trust/test_safefs.py", LINKS + "test_the_referee_step_refuses_a_link_at_its_output_names")),
    Mutation("planted_run_valid", "orchestrator/trust/judge.py", "        for path, kind in safefs.planted(run_dir)", "        for path, kind in []", "a run dir holding a link or FIFO is INVALID, named in one line", (LINKS + "test_links_planted_at_every_run_file_name_are_invalid_and_never_followed",)),
    Mutation("no_oversize_cleanup", "orchestrator/trust/disk.py", "        if path != os.path.join(run_dir, keep):", "        if False:", "a run killed over its disk cap loses its big files, keeps its log", (LINKS + "test_an_over_cap_run_keeps_its_log_and_loses_its_big_files",)),
    Mutation("no_workspace_cap", "orchestrator/trust/runner.py", "    disk.check_workspace(workspace, spec.max_workspace_bytes)\n", "", "a workspace past its cap runs nothing more", (LINKS + "test_a_workspace_over_its_cap_stops_the_loop",)),
]
# fmt: on


def rule_deletions(template: str, tests: tuple[str, ...]) -> list[Mutation]:
    """One mutation per rule of a template.json: that rule deleted, the rest kept. A rule that
    a stricter one on the same metric implies (EV > 0 beside EV >= 0.5) is left out: deleting
    it changes no verdict, only the message, so no test can or should notice."""
    text = (REPO / template).read_text()
    raw = json.loads(text)
    mutations = []
    for i, rule in enumerate(raw["rules"]):
        kept = raw["rules"][:i] + raw["rules"][i + 1 :]
        if any(_implies(other, rule) for other in kept):
            continue
        leaf = rule["metric"].rsplit(".", 1)[-1]
        guard = f"template rule {leaf} {rule['op']} {rule.get('value', '')}".strip()
        mutated = json.dumps({**raw, "rules": kept}, indent=2)
        mutations.append(Mutation(f"rule_{i}_{leaf}", template, text, mutated, guard, tests))
    return mutations


def _implies(a: dict, b: dict) -> bool:
    """Whether every value that passes rule `a` passes rule `b` (two bounds on one metric)."""
    if a["metric"] != b["metric"]:
        return False
    for side, tighter in (((">", ">="), max), (("<", "<="), min)):
        if a["op"] in side and b["op"] in side:
            if a["value"] != b["value"]:
                return tighter(a["value"], b["value"]) == a["value"]
            return a["op"] == b["op"] or a["op"] == side[0]  # on one bound, strict implies loose
    return False


MUTATIONS += rule_deletions(
    "templates/temporal_sae/template.json", (T + "trust/test_template_rules.py",)
)


# ---- running ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    mutation: Mutation
    result: str  # "caught" | "survived" | "stale" | "error"
    seconds: float
    evidence: str  # the first failing test, or why it is stale or broken


@contextmanager
def repo_copy() -> Iterator[Path]:
    """A throwaway copy of the working tree with the real virtual environments linked in."""
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        tree = Path(tmp) / "repo"
        shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(*COPY_IGNORE))
        (tree / ".venvs").symlink_to((REPO / ".venvs").resolve())
        try:
            yield tree
        finally:
            _kill_leftovers(tree)


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, str]:
    """("passed" | "failed" | "timeout" | "error", first failing test or last output line)."""
    for venv, group in _by_venv(tests).items():
        command = [venv, *PYTEST, f"--basetemp={tree / '.pytest-tmp'}", *group]
        log = tree / ".pytest-output.txt"  # a file, not a pipe: a stray child cannot hold it
        with log.open("w") as sink:
            proc = subprocess.Popen(
                command, cwd=tree, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout", f"tests still running after {timeout:.0f} s"
        finally:
            _kill_leftovers(tree)  # runs that the tests started in their own sessions
        out = log.read_text(errors="replace")
        if proc.returncode == 1:
            failed = re.findall(r"^FAILED (.+?)(?: - .*)?$", out, re.M)
            return "failed", Path(failed[0]).name if failed else out.strip().splitlines()[-1]
        if proc.returncode != 0:
            return "error", (out.strip().splitlines() or ["no output"])[-1]
    return "passed", ""


def _by_venv(tests: tuple[str, ...]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for test in tests:
        (venv,) = [python for tree, python in VENV_OF.items() if test.startswith(tree + "/")]
        groups.setdefault(venv, []).append(test)
    return groups


def _kill_leftovers(tree: Path) -> None:
    """SIGKILL every process still working inside `tree` (all started by these tests)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with suppress(OSError):
                if Path(os.readlink(proc / "cwd")).is_relative_to(tree):
                    os.kill(int(proc.name), signal.SIGKILL)


def try_mutation(mutation: Mutation, timeout: float) -> Outcome:
    start = time.monotonic()
    with repo_copy() as tree:
        path = tree / mutation.file
        text = path.read_text()
        found = text.count(mutation.original)
        if found != 1:
            return Outcome(mutation, "stale", 0.0, f"snippet found {found} times; update it")
        path.write_text(text.replace(mutation.original, mutation.mutated))
        status, evidence = run_tests(tree, mutation.tests, timeout)
    result = {"passed": "survived", "failed": "caught", "timeout": "caught"}.get(status, "error")
    evidence = evidence if status != "timeout" else f"timeout: {evidence}"
    return Outcome(mutation, result, time.monotonic() - start, evidence)


def baseline_passes(mutations: list[Mutation], timeout: float) -> None:
    """Every selected test must pass on the unmutated tree, or a 'caught' means nothing."""
    tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
    with repo_copy() as tree:
        status, evidence = run_tests(tree, tests, timeout * 3)
    if status != "passed":
        raise SystemExit(
            f"the unmutated tree fails its tests ({status}: {evidence}): fix that first"
        )


def show(outcomes: list[Outcome], markdown: bool) -> None:
    caught = sum(o.result == "caught" for o in outcomes)
    counted = sum(o.result in ("caught", "survived") for o in outcomes)
    rows = [
        (
            o.mutation.name,
            o.mutation.file,
            o.mutation.guard,
            o.result,
            f"{o.seconds:.0f}",
            o.evidence,
        )
        for o in outcomes
    ]
    head = ("mutation", "file", "guard", "result", "s", "evidence")
    if markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    else:
        table = Table(title="mutations")
        for column in head:
            table.add_column(column)
        for row in rows:
            style = {"survived": "red", "stale": "yellow", "error": "yellow"}.get(row[3], "")
            table.add_row(*row, style=style)
        console.print(table)
    others = {r: sum(o.result == r for o in outcomes) for r in ("stale", "error")}
    print(
        f"{date.today()}: {caught}/{counted} mutations caught; stale {others['stale']}, "
        f"error {others['error']}, {sum(o.seconds for o in outcomes) / 60:.1f} min"
    )


def main() -> int:
    """Exit status 1 when a mutation survived, is stale or could not run: the table must not rot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only these mutations (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per test run")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = parser.parse_args()
    known = {m.name: m for m in MUTATIONS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutation(s) {', '.join(unknown)}; see --list")
    chosen = [known[n] for n in args.names] or MUTATIONS
    if args.list:
        for m in chosen:
            found = (REPO / m.file).read_text().count(m.original)
            print(f"{m.name:24} {m.file:28} {'' if found == 1 else 'STALE '}{m.guard}")
        return 0
    baseline_passes(chosen, args.timeout)
    outcomes = []
    for m in chosen:
        outcomes.append(try_mutation(m, args.timeout))
        print(f"{m.name}: {outcomes[-1].result} ({outcomes[-1].seconds:.0f} s)", flush=True)
    show(outcomes, args.markdown)
    return int(any(o.result != "caught" for o in outcomes))


if __name__ == "__main__":
    sys.exit(main())
