"""Produce run_0, the baseline every idea is compared against: run experiment.py for real, have
the lab's referee measure the SAE it saved (the same sandboxed step the loop runs), then
validate against template.json's rules plus its baseline_rules (the quality floor of the CPU
default). Never hand-write run_0.

    .venvs/lab/bin/python templates/temporal_sae/make_baseline.py              # -> run_0/
    .venvs/lab/bin/python templates/temporal_sae/make_baseline.py --out_dir=/tmp/r0 --budget=tiny

Extra flags go to experiment.py unchanged; --budget (default: template.json's "profile") picks
the experiment's budget and the referee's lab profile together.
Exit status 0 only when the run is valid.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from orchestrator import referee
from orchestrator.templates import Rule, TemplateSpec, load_template
from orchestrator.validate import Verdict, validate_run

HERE = Path(__file__).resolve().parent
console = Console()


def baseline_spec(budget: str | None = None) -> TemplateSpec:
    """The template's spec with the baseline floor appended to its rules, measured with the
    lab profile `budget` (default: the template's "profile")."""
    spec = load_template(HERE)
    raw = json.loads((HERE / "template.json").read_text())
    floor = [Rule(**rule) for rule in raw.get("baseline_rules", [])]
    return dataclasses.replace(spec, rules=[*spec.rules, *floor], profile=budget or spec.profile)


def run_experiment(out_dir: Path, extra: list[str]) -> None:
    command = [sys.executable, "experiment.py", f"--out_dir={out_dir}", *extra]
    console.print(f"[bold]running[/] {' '.join(command)}  (in {HERE})")
    subprocess.run(command, cwd=HERE, check=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", type=Path, default=HERE / "run_0")
    parser.add_argument("--budget", help="lab profile (default: template.json's 'profile')")
    args, extra = parser.parse_known_args(argv)
    out_dir = args.out_dir.resolve()
    spec = baseline_spec(args.budget)
    try:
        run_experiment(out_dir, [f"--budget={spec.profile}", *extra])
    except subprocess.CalledProcessError as error:
        console.print(f"[red]experiment.py failed with exit status {error.returncode}[/]")
        return 1
    problems = referee.measure(out_dir.parent, spec, out_dir.name, earlier={}, live=True)
    verdict: Verdict = validate_run(out_dir, spec)
    verdict.problems[:0] = problems
    verdict.ok = not verdict.problems
    console.print(verdict.summary())
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
