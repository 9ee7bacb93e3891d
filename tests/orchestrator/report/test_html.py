"""report.html: the same numbers as notes.txt, the findings as a table, each run's diff and
provenance, dashboards only with the digest the referee recorded, the agent's words escaped and
labelled, the batch page's links; and the page in a real headless Chromium."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from git import Actor, Repo
from markupsafe import escape

from orchestrator.ideas import Hypothesis
from orchestrator.journal import Journal
from orchestrator.report import findings, html, summary
from orchestrator.report.findings import SUPPORTED
from orchestrator.report.notes import write_notes
from orchestrator.report.plots import make_plots
from orchestrator.text import render
from orchestrator.trust.safefs import file_digests
from tests.orchestrator.helpers import REPO, core_result, core_spec, core_write_run, set_knob

IDEA = {"Name": "toy", "Title": "Toy idea", "Experiment": "Train the toy model longer."}
ANALYSIS = "Run 1: <b>bold</b> claim & more; the loss fell."
REFEREE = ["{python}", "-m", "lab.referee", "{run_dir}", "--out", "{out_file}"]
ME = Actor("test", "test@example.com")
SCREENSHOT = REPO / "results" / "browser_test" / "report.png"  # results/ is gitignored
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def dashboards_json() -> dict:
    """What saelab.dashboards writes (its schema; tests/lab/test_dashboards checks the values)."""
    context = {
        "activation": 3.5,
        "at": 2,
        "tokens": [" the", " cat", " sat", " on"],
        "activations": [0.0, 1.2, 3.5, 0.0],
    }
    panel = {
        "latent": 17,
        "frequency": 0.0123,
        "max": 3.5,
        "mean_when_firing": 1.1,
        "contexts": [context],
        "histogram": {"edges": [0.0, 1.0, 2.0, 3.5], "counts": [5, 2, 1]},
        "logits_up": [{"token": " mat", "effect": 0.9}],
        "logits_down": [{"token": " dog", "effect": -0.7}],
    }
    return {"rule": "the most frequent", "n_tokens": 4096, "d_sae": 64, "latents": [panel]}


def _run(ws: Path, name: str, result: dict, lab_version: str) -> str:
    """A run dir with final_info.json, referee.json and dashboards.json (digest recorded)."""
    run_dir = core_write_run(ws, name, result)
    text = json.dumps(dashboards_json())
    (run_dir / html.DASHBOARDS_FILE).write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    artifact = hashlib.sha256(name.encode()).hexdigest()
    record = {"lab_version": lab_version, "artifact_sha256": artifact, "dashboards_sha256": digest}
    (run_dir / "referee.json").write_text(json.dumps({"referee": record}))
    return artifact


@pytest.fixture
def spec(tmp_path):
    return core_spec(tmp_path / "template", referee={"command": REFEREE})


@pytest.fixture
def workspace(tmp_path, spec):
    """A git workspace: the pristine baseline, one agent commit, run_1 judged VALID."""
    ws = tmp_path / "ws"
    _run(ws, "run_0", core_result(), "lab0")
    (ws / "experiment.py").write_text("lr = 0.1\n")
    repo = Repo.init(ws)
    repo.index.add(["experiment.py", "run_0"])
    repo.index.commit("template: pristine", author=ME, committer=ME)
    (ws / "experiment.py").write_text("lr = 0.05  # halved\n")
    repo.index.add(["experiment.py"])
    sha = repo.index.commit("run_1: halve the learning rate", author=ME, committer=ME).hexsha
    artifact = _run(ws, "run_1", core_result(final_loss=0.0091, eval={"score": 0.91}), "lab1")
    journal = Journal(ws / "journal.jsonl")
    journal.append("start", idea="toy")
    journal.append("prompt", text="go", run_name="run_1")
    journal.append("llm_call", prompt_tokens=100, completion_tokens=20, cost=0.01)
    journal.append("response", text="halving lr", run_name="run_1")
    journal.append("commit", sha=sha, message="run_1", files=["experiment.py"])
    journal.append("run", run_name="run_1", attempt=1, returncode=0, timed_out=False, seconds=3.0)
    metrics = {"steps": 120, "loss": 0.0091, "score": 0.91}
    journal.append(
        "verdict", run_name="run_1", ok=True, problems=[], metrics=metrics,
        sources=dict.fromkeys(metrics, "measured"), artifact=artifact,
        files=file_digests(ws / "run_1"), commit=sha,
    )  # fmt: skip
    journal.append("run_done", run_name="run_1", status="ok")
    journal.append("response", text=ANALYSIS)
    make_plots(ws, spec, journal, live=False)
    return ws


def written(ws: Path, spec, found: findings.Findings | None = None) -> tuple[str, str]:
    journal = Journal(ws / "journal.jsonl")
    notes = write_notes(ws, spec, journal, IDEA).read_text()
    return notes, html.write_report(ws, spec, journal, IDEA, found).read_text()


class Cells(HTMLParser):
    """The text of every table cell, row by row, of the table with id `table_id`."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.inside, self.rows, self.cell = table_id, False, [], None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table" and ("id", self.table_id) in attrs:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell += data


def cells(page: str, table_id: str = "runs-table") -> list[list[str]]:
    parser = Cells(table_id)
    parser.feed(page)
    return parser.rows


def notes_table(notes: str) -> list[list[str]]:
    """notes.txt's key-metric table, split on its two-space column gaps."""
    block = notes.split("## Key metrics", 1)[1].split("\n\n")[1]
    return [re.split(r"\s{2,}", line.strip()) for line in block.splitlines()]


def test_the_report_shows_the_numbers_notes_txt_shows(workspace, spec):
    notes, page = written(workspace, spec)
    in_notes, in_page = notes_table(notes), cells(page)
    assert in_page[0][1:] == in_notes[0]  # run names
    assert in_page[1][1:] == in_notes[1]  # verdicts
    for row in in_page[2:]:
        assert row in [line for line in in_notes if len(line) == len(row)], row
    assert [r[0].split(" (")[0] for r in in_page[2:]] == ["steps", "loss", "score"]
    assert in_page[3][2] == "0.0091 (-0.003246)"  # the journal's judged loss, its difference


def test_the_findings_table_says_what_notes_says_and_escapes_the_ideas_words(workspace, spec):
    assert 'id="no-findings"' in written(workspace, spec)[1]
    up = Hypothesis("score", "up", "a <b>bigger</b> model & more")
    worse = Hypothesis("loss", "not_worse", "must not cost", margin=0.01)
    arms = [findings.Arm.of(v) for v in ([0.5, 0.51, 0.49], [0.9, 0.91, 0.92], [0.1], [0.1])]
    found = findings.Findings(
        "run_1", [1, 2], "confirmed at 3 seeds",
        [findings.Finding(up, findings.Effect("score", *arms[:2], ci=(0.3, 0.5)), SUPPORTED),
         findings.Finding(worse, None, findings.UNMEASURED)],
        [findings.Effect("steps", *arms[2:])],
    )  # fmt: skip
    page = written(workspace, spec, found)[1]
    notes = render("findings.j2", findings=found, baseline=spec.baseline_run)
    rows = cells(page, "findings-table")
    assert rows[0] == ["hypothesis", "verdict", "run_0", "run_1", "difference", "why expected"]
    assert rows[1][:2] == ["score up", SUPPORTED]
    assert rows[2][:2] == ["loss not worse than +0.01", findings.UNMEASURED]
    for cell in rows[1][2:5]:  # the two arms and the difference, as notes.txt words them
        assert cell in notes, cell
    assert f"- score up: {SUPPORTED.upper()}" in notes
    assert "a &lt;b&gt;bigger&lt;/b&gt; model &amp; more" in page  # the idea's words, escaped
    assert '<td class="ok">supported</td>' in page and 'id="no-findings"' not in page
    assert f"steps: {found.other[0].describe()}" in page and escape(found.rule) in page


def test_each_run_shows_its_diff_provenance_and_the_agents_words_escaped(workspace, spec):
    page = written(workspace, spec)[1]
    sha = Journal(workspace / "journal.jsonl").attempts()[0].verdict["commit"]
    run_1 = page.split('id="run-1"')[1]
    assert f"commit {sha}" in run_1 and "referee lab_version lab1" in run_1
    assert hashlib.sha256(b"run_1").hexdigest() in run_1
    assert "halved" in run_1 and 'class="diff"' in run_1  # pygments' highlighted diff
    assert "Run 1: &lt;b&gt;bold&lt;/b&gt; claim &amp; more" in run_1
    assert "The agent's analysis (its words, unchecked)" in run_1
    assert '<img class="plot" src="plots/key_metrics.png"' in page


def test_dashboards_are_shown_only_with_the_digest_the_referee_recorded(workspace, spec):
    page = written(workspace, spec)[1]
    assert 'id="run_1-latent-17"' in page and 'id="run_0-latent-17"' in page
    assert '<span class="tok fire"' in page and '<td class="mono">" mat"</td>' in page
    (workspace / "run_1" / html.DASHBOARDS_FILE).write_text(json.dumps(dashboards_json()) + " ")
    page = written(workspace, spec)[1]
    assert 'id="run_1-latent-17"' not in page
    assert "dashboards.json changed after the verdict; not shown" in page
    (workspace / "run_0" / html.DASHBOARDS_FILE).write_text("{}")  # run_0 has no verdict
    page = written(workspace, spec)[1]
    assert "does not match the digest referee.json recorded" in page


def test_the_batch_report_links_each_ideas_report(workspace, spec, tmp_path):
    written(workspace, spec)
    shutil.copy(tmp_path / "template" / "template.json", workspace)  # summarize reads it
    rows = [summary.summarize("toy", "toy", workspace), summary.summarize("other", "toy", None)]
    page = html.write_batch_report(tmp_path, rows).read_text()
    assert '<a href="ws/report.html">report</a>' in page
    assert "(no report.html yet)" in page and "Template toy" in page


def _browser_or_skip() -> None:
    """Skip without Debian's chromium or selenium, except where CI asks for the browser test
    (.ci/run sets SAE_REQUIRE_BROWSER=1 after installing it): there a missing one fails."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e .[orch])")
    if missing:
        why = f"missing {', '.join(missing)}: apt-get install -y chromium chromium-driver"
        if os.environ.get("SAE_REQUIRE_BROWSER"):
            pytest.fail(why)
        pytest.skip(why)


def test_the_page_in_a_real_headless_chromium(workspace, spec, tmp_path):
    _browser_or_skip()
    from selenium import webdriver

    page = html.write_report(workspace, spec, Journal(workspace / "journal.jsonl"), IDEA)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'chr'}",
        "--window-size=1280,2000",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    browser = webdriver.Chrome(options=options, service=service)
    try:
        browser.get(page.as_uri())
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        shown = browser.execute_script(
            "return [...document.querySelectorAll('#runs-table tr')]"
            ".map(r => [...r.cells].map(c => c.textContent.trim()))"
        )
        assert shown == cells(page.read_text())
        assert shown[2][2].startswith("120")  # steps as the verdict recorded them
        images = browser.execute_script(
            "return [...document.images].map(i => [i.src, i.complete && i.naturalWidth > 0])"
        )
        assert images and all(loaded for _, loaded in images), images
        assert browser.execute_script("return document.querySelector('.diff').innerText")
        fire = browser.execute_script(
            "return document.querySelector('#run_1-latent-17 .fire').textContent"
        )
        assert fire == " sat"
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT))  # for a person to look at
    finally:
        browser.quit()


def test_the_real_loop_writes_report_html_and_names_it_last(run_loop, reply, capfd):
    responses = [
        set_knob(reply, "More steps.", "steps", "300"),
        reply("Done: <i>better</i>.", tail="ALL_COMPLETED"),
    ]
    ws, _ = run_loop(responses, max_runs=1)
    page = (ws / html.REPORT_FILE).read_text()
    assert 'run_1 (attempt 1): <span class="ok">VALID</span>' in page
    assert "steps = 300" in page  # the agent's edit, from git
    assert "Done: &lt;i&gt;better&lt;/i&gt;." in page
    out = capfd.readouterr().out.strip().splitlines()
    assert out[-1] == f"report: {ws / html.REPORT_FILE} (open it in a browser)"
    assert "report.html, beside" in (ws / "notes.txt").read_text()


def test_a_crashed_run_shows_the_diff_of_the_commit_it_ran(workspace, spec):
    (workspace / "experiment.py").write_text("lr = 1e9  # too far\n")
    repo = Repo(workspace)
    repo.index.add(["experiment.py"])
    sha = repo.index.commit("run_2: a huge step", author=ME, committer=ME).hexsha
    journal = Journal(workspace / "journal.jsonl")
    journal.append("commit", sha=sha, message="run_2", files=["experiment.py"])
    journal.append("run", run_name="run_2", attempt=1, returncode=1, timed_out=False, seconds=1.0)
    journal.append("run_done", run_name="run_2", status="crashed")
    page = written(workspace, spec)[1]
    run_2 = page.split('id="run-2"')[1]
    assert "CRASHED" in run_2 and f"commit {sha}" in run_2 and "too far" in run_2
    assert "+lr = 0.05" not in run_2 and "-lr = 0.05" in run_2  # against run_1's code


def test_without_a_referee_the_page_claims_no_measurement(workspace, tmp_path):
    spec = core_spec(tmp_path / "bare")  # the same template without its referee
    page = written(workspace, spec)[1]
    assert "This template has no referee" in page and "measured by the" not in page
    assert "(none: this template has no referee to compute them)" in page
    assert 'id="run_1-latent-17"' not in page


# a stand-in lab referee: its JSON, and dashboards beside it whose digest the JSON records
FAKE_REFEREE = """
import hashlib, json, sys
from pathlib import Path
out = Path(sys.argv[2])
text = Path(sys.argv[3]).read_text()
out.with_name("dashboards.json").write_text(text)
digest = hashlib.sha256(text.encode()).hexdigest()
record = {"artifact_sha256": "a" * 64, "lab_version": "fake", "dashboards_sha256": digest}
out.write_text(json.dumps({"referee": record}))
"""


def test_the_referees_dashboards_reach_the_run_dir_and_the_page(workspace, tmp_path):
    from orchestrator.trust import referee

    panels = workspace / "panels.json"  # the referee reads the workspace, not the rest of /tmp
    panels.write_text(json.dumps(dashboards_json() | {"rule": "copied by the loop"}))
    command = ["{python}", "-c", FAKE_REFEREE, "{run_dir}", "{out_file}", str(panels)]
    spec = core_spec(tmp_path / "faked", referee={"command": command})
    for name in ("referee.json", html.DASHBOARDS_FILE):
        (workspace / "run_1" / name).unlink()
    assert referee.measure(workspace, spec, "run_1", earlier={}, live=False) == []
    copied = json.loads((workspace / "run_1" / html.DASHBOARDS_FILE).read_text())
    assert copied["rule"] == "copied by the loop"
    journal = Journal(workspace / "journal.jsonl")
    journal.append("verdict", run_name="run_1", ok=True, problems=[], metrics={},
                   files=file_digests(workspace / "run_1"), commit=None)  # fmt: skip
    journal.append("run_done", run_name="run_1", status="ok")
    page = html.write_report(workspace, spec, journal, IDEA).read_text()
    assert page.count("Latents: copied by the loop") == 1  # the latest attempt's alone
    assert "(no dashboards: replaced)" not in page  # the replaced attempt is not listed
