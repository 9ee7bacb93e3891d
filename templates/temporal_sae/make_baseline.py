"""Produce run_0, the baseline every idea is compared against, and its seed-noise band: run
experiment.py for real at 3 seeds, have the lab's referee measure each saved SAE (the same
sandboxed step the loop runs), validate each against template.json's rules plus its
baseline_rules (the quality floor of the CPU default), and write the spread of every key metric
over the seeds to the template's noise file (run_0/noise.json). Never hand-write run_0.

    .venvs/lab/bin/python templates/temporal_sae/make_baseline.py              # -> run_0/
    .venvs/lab/bin/python templates/temporal_sae/make_baseline.py --out_dir=/tmp/r0 --budget=tiny

run_0 is the first seed; the others train beside it (run_0_seed1, ...) and are removed once
measured. Each seed's twin (feature stability) is the next seed's SAE, so stability gets a band
too at no extra training. Extra flags go to experiment.py unchanged; --budget (default:
template.json's "profile") picks the experiment's budget and the referee's lab profile
together. Exit status 0 only when every seed's run is valid.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator.report.noise import write_noise
from orchestrator.templates import Rule, TemplateSpec, load_template
from orchestrator.trust import referee
from orchestrator.trust.validate import Verdict, validate_run
from saelab.artifact import FILES
from saelab.referee import TWIN_DIR

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)  # run_0 is the first
STABILITY = "temporal.eval_result_metrics.temporal.feature_stability"  # measured with the twin
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


def lend_twins(run_dirs: list[Path]) -> None:
    """Each run's twin is the next run's SAE (the last's is the first's): a feature-stability
    pair for every seed without training any SAE twice."""
    for run_dir, other in zip(run_dirs, run_dirs[1:] + run_dirs[:1], strict=True):
        (run_dir / TWIN_DIR).mkdir(exist_ok=True)
        for name in FILES:
            shutil.copyfile(other / name, run_dir / TWIN_DIR / name)


def judge(run_dir: Path, spec: TemplateSpec) -> Verdict:
    problems = referee.measure(run_dir.parent, spec, run_dir.name, earlier={}, live=True)
    verdict = validate_run(run_dir, spec)
    verdict.problems[:0] = problems
    verdict.ok = not verdict.problems
    console.print(f"[bold]{run_dir.name}[/]: {verdict.summary()}")
    return verdict


def measured(run_dir: Path, verdict: Verdict, spec: TemplateSpec) -> dict:
    """A seed's key metrics by dotted path, plus the feature stability the referee measured."""
    values = {path: verdict.metrics.get(name) for name, path in spec.key_metrics.items()}
    temporal = json.loads((run_dir / "referee.json").read_text()).get("temporal", {})
    values[STABILITY] = (
        temporal.get("eval_result_metrics", {}).get("temporal", {}).get("feature_stability")
    )
    return values


def band_table(noise: dict) -> Table:
    table = Table(title=f"seed-noise band over seeds {noise['seeds']}")
    for column in ("metric", "mean", "spread (std)", "values"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for path, band in noise["metrics"].items():
        values = " ".join(f"{v:.4g}" for v in band["values"])
        table.add_row(path, f"{band['mean']:.4g}", f"{band['spread']:.2g}", values)
    return table


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", type=Path, default=HERE / "run_0")
    parser.add_argument("--budget", help="lab profile (default: template.json's 'profile')")
    args, extra = parser.parse_known_args(argv)
    out_dir = args.out_dir.resolve()
    spec = baseline_spec(args.budget)
    run_dirs = [out_dir] + [out_dir.with_name(f"{out_dir.name}_seed{s}") for s in SEEDS[1:]]
    try:
        for seed, run_dir in zip(SEEDS, run_dirs, strict=True):
            shutil.rmtree(run_dir / TWIN_DIR, ignore_errors=True)  # a stale twin is not ours
            run_experiment(run_dir, [f"--budget={spec.profile}", f"--seed={seed}", *extra])
    except subprocess.CalledProcessError as error:
        console.print(f"[red]experiment.py failed with exit status {error.returncode}[/]")
        return 1
    lend_twins(run_dirs)
    verdicts = [judge(run_dir, spec) for run_dir in run_dirs]
    per_seed = [measured(d, v, spec) for d, v in zip(run_dirs, verdicts, strict=True)]
    noise = write_noise(out_dir / Path(spec.noise or "noise.json").name, list(SEEDS), per_seed)
    console.print(band_table(noise))
    for run_dir in run_dirs[1:]:
        shutil.rmtree(run_dir)  # measured and summarised in the noise file
    return 0 if all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
