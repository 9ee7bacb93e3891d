"""saelab.compare: the paired bootstrap over eval items. Synthetic item files here (closed forms,
numpy only); tests/lab/test_items.py runs it on real SAEs measured by the evals."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from saelab.compare import FORMAT, ItemsError, compare, load_items, main, metric_value

PATH = "core.eval_result_metrics.sparsity.l0"


def items_file(entries: dict[str, dict]) -> dict:
    return {"format": FORMAT, "metrics": entries}


def entry(num, den=None, form="ratio", items="set-1") -> dict:
    num = np.atleast_2d(np.asarray(num, dtype=float)).tolist()
    den = None if den is None else np.atleast_2d(np.asarray(den, dtype=float)).tolist()
    return {"items": items, "form": form, "num": num, "den": den}


def test_metric_value_is_the_mean_over_components_of_ratios_of_sums():
    # two components (e.g. two lags): (1+3)/(2+4) and (2+2)/(8+8), averaged
    value = metric_value(entry([[1, 3], [2, 2]], [[2, 4], [8, 8]]))
    assert value == pytest.approx(0.5 * (4 / 6 + 4 / 16))
    assert metric_value(entry([1, 0, 1, 1])) == pytest.approx(0.75)  # no den: a plain mean
    assert metric_value(entry([1, 1], [4, 4], "one_minus")) == pytest.approx(0.75)  # EV's form
    assert metric_value(entry([0, 0], [0, 0])) == 0.0  # consistency where nothing fires


def test_a_shifted_group_is_found_and_an_identical_one_is_not():
    rng = np.random.default_rng(1)
    base = rng.normal(10, 3, size=400)
    noise = [rng.normal(0, 0.5, size=400) for _ in range(3)]
    group_b = [items_file({PATH: entry(base + e)}) for e in noise]
    shifted = [items_file({PATH: entry(base + 0.3 + rng.normal(0, 0.5, size=400))})]
    same = [items_file({PATH: entry(base + rng.normal(0, 0.5, size=400))})]

    found = compare(shifted, group_b)["metrics"][PATH]
    assert found["excludes_zero"] and found["ci95"][0] > 0
    assert found["diff"] == pytest.approx(0.3, abs=0.1)
    assert found["b_runs"] == pytest.approx([float((base + e).mean()) for e in noise])
    # the paired CI is much narrower than the items' spread (sd 3): pairing removes it
    assert found["ci95"][1] - found["ci95"][0] < 0.3
    assert not compare(same, group_b)["metrics"][PATH]["excludes_zero"]


def test_the_bootstrap_is_seeded_and_recomputes_each_metric_exactly():
    a = [items_file({PATH: entry([1, 2, 3, 4], [1, 1, 2, 2], "one_minus")})]
    b = [items_file({PATH: entry([2, 2, 2, 2], [1, 1, 2, 2], "one_minus")})]
    first, again = compare(a, b), compare(a, b)
    assert first == again
    assert first["metrics"][PATH]["a"] == pytest.approx(1 - 10 / 6)
    many = np.random.default_rng(0).normal(size=(2, 200))
    a, b = ([items_file({PATH: entry(values)})] for values in many)
    assert compare(a, b, seed=1)["metrics"][PATH]["ci95"] != compare(a, b)["metrics"][PATH]["ci95"]


def test_runs_on_different_items_are_refused(tmp_path):
    a = [items_file({PATH: entry([1, 2], items="set-1")})]
    b = [items_file({PATH: entry([1, 2], items="set-2")})]
    with pytest.raises(ItemsError, match="different items"):
        compare(a, b)
    with pytest.raises(ItemsError, match="at least one"):
        compare(a, [])
    bad = tmp_path / "referee.json"
    bad.write_text(json.dumps({"core": {}}))
    with pytest.raises(ItemsError, match="referee_items.json"):
        load_items(bad)


def test_the_cli_prints_json_and_imports_no_torch(tmp_path, capsys):
    paths = []
    for name, values in (("a", [3, 4, 5]), ("b", [1, 2, 3])):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(items_file({PATH: entry(values)})))
        paths.append(str(path))
    assert main(["--a", paths[0], "--b", paths[1]]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"][PATH]["diff"] == pytest.approx(2.0)
    assert main(["--a", paths[0], "--b", str(tmp_path / "missing.json")]) == 2
    code = "import sys, saelab.compare; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
