"""The referee step: after an experiment exits, the lab measures what the run saved.

The template's referee command (e.g. `python -I -m saelab.referee {run_dir} --out {out_file}`;
{workspace} names the workspace, for a referee script kept there as a protected file)
runs in the sandbox like agent code, but it may write only a temporary directory of its own
(outside the workspace), and its lab-cache writes go to a scratch dir that is thrown away. Its
JSON is copied into the run dir by the orchestrator, through trust/safefs: a link planted at
either end (by the experiment, or by an artifact the referee loaded) is refused, not followed.
An artifact whose digest equals the baseline's or an earlier run's is not new work. Nothing here
knows what the numbers mean.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from orchestrator.templates import TemplateSpec, expand_command
from orchestrator.trust import safefs
from orchestrator.trust.runner import run_sandboxed
from orchestrator.trust.validate import get_path

LOG_FILE = "referee_log.txt"


def measure(
    workspace: Path, spec: TemplateSpec, run_name: str, earlier: dict[str, str], live: bool
) -> list[str]:
    """Run the referee on `workspace/run_name`; its JSON lands in the run dir. Returns the
    problems that make the run invalid (none: measured). `earlier` maps run names to the
    artifact digests already judged."""
    run_dir = Path(workspace) / run_name
    with tempfile.TemporaryDirectory(prefix="referee-") as scratch:
        try:
            failed = _run(Path(workspace), spec, run_name, Path(scratch), live)
        except safefs.Planted as err:
            return [f"the referee's records were not written: {err}"]
    return failed or _copies(artifact_digest(run_dir, spec), earlier, run_name)


def _run(
    workspace: Path, spec: TemplateSpec, run_name: str, scratch: Path, live: bool
) -> list[str]:
    """The referee in its sandbox, writing under `scratch`; its JSON files copied into the run
    dir. Returns why it could not measure (none: measured)."""
    assert spec.referee is not None
    run_dir = workspace / run_name
    out_dir = scratch / "out"
    out_dir.mkdir()
    out_file = out_dir / spec.referee.result_file
    command = expand_command(
        spec.referee.command,
        spec,
        run_dir=str(run_dir),
        workspace=str(workspace),
        out_file=str(out_file),
    )
    result = run_sandboxed(
        command,
        spec,
        cwd=out_dir,  # not the workspace: nothing there is on the referee's import path
        writable=out_dir,
        scratch=scratch,
        reads=(workspace,),
        sealed=True,  # the lab's evaluation data, which agent code never reads
        log_path=run_dir / LOG_FILE,
        timeout=spec.referee.timeout_seconds,
        live=live,
        title=f"referee {run_name}",
    )
    if not result.ok or not out_file.is_file():
        why = _last_line(result.stderr_tail) or f"exit code {result.returncode}"
        return [f"the lab could not measure {run_name}'s saved artifact: {why}"]
    # the result file first, then the lab's other records (dashboards.json, referee_items.json)
    for record in [out_file, *sorted(set(out_dir.glob("*.json")) - {out_file})]:
        safefs.copy_in(record, run_dir, record.name)
    return []


def artifact_digest(run_dir: Path, spec: TemplateSpec) -> str | None:
    """The artifact's digest as the referee recorded it in the run's referee file."""
    assert spec.referee is not None
    try:
        data = safefs.read_json(Path(run_dir) / spec.referee.result_file)
        digest = get_path(data, spec.referee.artifact_key)
    except (OSError, ValueError, KeyError):
        return None
    return digest if isinstance(digest, str) else None


def _copies(digest: str | None, earlier: dict[str, str], run_name: str) -> list[str]:
    if digest is None:
        return [f"the referee recorded no artifact digest for {run_name}"]
    same = [name for name, other in earlier.items() if other == digest]
    if same:
        return [
            f"the saved SAE is byte-identical to {same[0]}'s: not new work; train and save a "
            "new SAE in this run"
        ]
    return []


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
