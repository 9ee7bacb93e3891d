"""saelab.data: determinism, held-out eval items, balance, cache integrity, clear errors.

The first test to run builds the offline data into the real cache (~1 min cold, download
included; ~1 s warm). Tests that corrupt files work on a copy in a temporary cache.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from saelab import data
from saelab.cache import SaelabError
from saelab.datasets import bigbench, facts
from saelab.datasets.store import read_artefact, write_artefact

SOURCE_FILES = ("bigbench.json", "code.json", "facts.json")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return data.load_corpus("offline-mix")  # builds everything on a cold cache


@pytest.fixture(scope="session")
def reference(corpus) -> dict:
    """Fingerprints and tasks from the real cache, before any test swaps the cache dir."""
    fingerprints = {name: data.corpus_fingerprint(name) for name in data.CORPORA}
    return {
        "fingerprints": fingerprints,
        "probing": data.probing_tasks(),
        "dir": data._dir(),  # the sealed tree's eval sets and sources
        "corpus": data._path("corpus-offline-mix.json"),  # the training tree's corpus
    }


@pytest.fixture
def tmp_cache(reference, tmp_path, monkeypatch) -> Path:
    """A fresh cache holding only the (already built) source artefacts."""
    source_dir = reference["dir"]
    monkeypatch.setenv("SAELAB_CACHE", str(tmp_path))
    for name in SOURCE_FILES:
        for suffix in ("", ".sha256"):
            shutil.copy(source_dir / (name + suffix), data._dir() / (name + suffix))
    return data._dir()


def test_corpus_is_large_and_mixes_prose_and_code(corpus):
    stats = data.corpus_stats()
    prose_words = sum(row["words"] for source, row in stats.items() if source != "python_code")
    assert prose_words * data.WORDS_TO_TOKENS >= 5_000_000
    assert stats["python_code"]["docs"] > 0
    assert len(corpus) == sum(row["docs"] for row in stats.values())
    prose = set(data.load_corpus("offline-prose"))
    assert prose < set(corpus) and any("def " in doc and doc not in prose for doc in corpus)


def test_build_is_deterministic(corpus, reference, tmp_cache):
    original = reference["fingerprints"]
    corpus_path = data._path("corpus-offline-mix.json")
    assert not corpus_path.exists()
    rebuilt = {name: data.corpus_fingerprint(name) for name in data.CORPORA}  # from scratch
    assert rebuilt == original != {}
    assert data.load_corpus() == corpus
    assert data.probing_tasks() == reference["probing"]
    fingerprint = hashlib.sha256(corpus_path.read_bytes()).hexdigest()
    assert fingerprint == original["offline-mix"]


def test_eval_items_are_absent_from_corpus(corpus):
    in_corpus = {_sha(doc) for doc in corpus}
    tasks = data.probing_tasks(n_per_class=data.PROBE_RESERVE)
    probe_texts = [t for task in tasks.values() for t in task.texts_train + task.texts_test]
    questions = data.unlearning_questions("forget") + data.unlearning_questions("retain")
    eval_texts = probe_texts + data.forget_texts() + data.retain_texts()
    eval_texts += [q.prompt for q in questions]
    assert not in_corpus & {_sha(text) for text in eval_texts}
    # probe items are clipped documents: check that no corpus document contains one either
    joined = "\x00".join(corpus)
    english = [
        t for name in ("topic", "code_language", "language_id") for t in tasks[name].texts_test
    ]
    english += data.retain_texts(20)
    for text in english[::10]:
        assert text[:300] not in joined


def test_probing_tasks_are_balanced_and_large_enough():
    tasks = data.probing_tasks(n_per_class=data.PROBE_RESERVE)
    assert set(tasks) == {"language_id", "code_language", "topic", "sentiment"}
    for task in tasks.values():
        assert Counter(task.y_train)[1] == Counter(task.y_train)[0]
        assert Counter(task.y_test)[1] == Counter(task.y_test)[0] > 0
        assert len(task.y_train) + len(task.y_test) >= 1000
        assert not set(task.texts_train) & set(task.texts_test)
        assert len(task.texts_train) == len(task.y_train)
    german = data.probing_tasks(["language_id:de"], n_per_class=50)["language_id:de"]
    positives = [t for t, y in zip(german.texts_train, german.y_train, strict=True) if y]
    assert all(bigbench.detect_language(text) == "de" for text in positives)


@pytest.mark.parametrize("domain", ["forget", "retain"])
def test_questions_have_one_correct_option_in_balanced_positions(domain):
    facts = read_artefact(data._dir() / "facts.json")[domain]
    truth = {prompt: answer for _, prompt, answer in facts}
    questions = data.unlearning_questions(domain)
    assert {q.subject for q in questions} == set(data.SUBJECTS[domain])
    for q in questions:
        options = [option.strip() for option in q.options]
        assert len(options) == 4 == len(set(options))
        assert [o == truth[q.prompt] for o in options].count(True) == 1
        assert options[q.answer] == truth[q.prompt] and q.domain == domain
    for n in (100, len(questions)):
        counts = Counter(q.answer for q in questions[:n]).values()
        assert len(counts) == 4 and max(counts) - min(counts) <= 1
    first = Counter(q.subject for q in data.unlearning_questions(domain, 30))
    assert len(first) == len(data.SUBJECTS[domain])  # a short prefix still mixes subjects


def test_unlearning_texts():
    forget, retain = data.forget_texts(), data.retain_texts()
    assert len(forget) > 10_000 and len(retain) > 500
    assert not set(forget) & set(retain)
    assert data.forget_texts(5) == forget[:5]


def test_corrupt_or_partial_cache_files_are_rebuilt(corpus, reference, tmp_cache):
    path = data._path("corpus-offline-mix.json")  # a built cache, then damage it
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", ".sha256"):
        shutil.copy(f"{reference['corpus']}{suffix}", f"{path}{suffix}")
        shutil.copy(reference["dir"] / f"probing.json{suffix}", tmp_cache)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a partial write
    (tmp_cache / "probing.json").write_text("{}")  # an edit: fails its checksum
    code_path = tmp_cache / "code.json"
    code_path.write_text(code_path.read_text().replace("def ", "fed ", 1))
    assert data.load_corpus() == corpus
    assert data.corpus_fingerprint() == reference["fingerprints"]["offline-mix"]
    assert data.probing_tasks() == reference["probing"]
    assert read_artefact(code_path) is not None and read_artefact(path) is not None


def test_store_rejects_a_file_without_matching_sidecar(tmp_path):
    path = tmp_path / "x.json"
    write_artefact(path, {"a": [1, 2]})
    assert read_artefact(path) == {"a": [1, 2]}
    path.with_name("x.json.sha256").unlink()
    assert read_artefact(path) is None


def test_bad_names_give_one_line_errors_listing_valid_names():
    with pytest.raises(SaelabError) as err:
        data.load_corpus("wikitext")
    message = str(err.value)
    assert "\n" not in message and "offline-mix" in message and "offline-prose" in message
    with pytest.raises(SaelabError, match="language_id"):
        data.probing_tasks(["languages"])
    with pytest.raises(SaelabError, match="n_per_class"):
        data.probing_tasks(n_per_class=10_000)
    with pytest.raises(SaelabError, match="forget"):
        data.unlearning_questions("biology")
    with pytest.raises(SaelabError, match="hf:<dataset>"):
        data.load_corpus("hf:only-a-name")


def test_hf_corpus_uses_the_datasets_library(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "toy"
    folder.mkdir()
    rows = [{"text": f"document {i}", "label": i % 2} for i in range(5)]
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    name = f"hf:{folder}:train:text"
    assert data.load_corpus(name) == [row["text"] for row in rows]
    assert data.corpus_fingerprint(name) == data.corpus_fingerprint(name)
    with pytest.raises(SaelabError, match="no field"):
        data.load_corpus(f"hf:{folder}:train:body")


def _local_dataset(tmp_path, monkeypatch, rows: list[dict]) -> Path:
    """A folder the datasets library loads like a hub dataset, with no network."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_hub_probing_task_is_balanced_and_split(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    rows = [{"text": f"review {i}", "stars": 5 if i % 3 == 0 else 1} for i in range(60)]
    folder = _local_dataset(tmp_path, monkeypatch, rows)
    (task,) = data.probing_tasks([f"hf:{folder}:test:text:stars=5"], n_per_class=10).values()
    assert sum(task.y_train) == len(task.y_train) // 2 == 8
    assert sum(task.y_test) == len(task.y_test) // 2 == 2
    positives = {f"review {i}" for i in range(60) if i % 3 == 0}
    texts = task.texts_train + task.texts_test
    labels = task.y_train + task.y_test
    assert all((text in positives) == bool(y) for text, y in zip(texts, labels, strict=True))
    with pytest.raises(SaelabError, match="<label>=<value>"):
        data.probing_tasks([f"hf:{folder}:test:text:stars"])


def test_hub_questions_follow_the_wmdp_layout(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    rows = [
        {
            "question": "Which organ pumps blood?",
            "choices": ["Liver", "Heart", "Lung", "Skin"],
            "answer": 1,
        },
        {
            "question": "Which gas do we exhale?",
            "choices": ["CO2", "Neon", "Argon", "Ozone"],
            "answer": 0,
        },
    ]
    folder = _local_dataset(tmp_path, monkeypatch, rows)
    first, second = data.unlearning_questions(f"hf:{folder}:test")
    assert first.prompt == "Question: Which organ pumps blood?\nAnswer:"
    assert first.options[first.answer] == " Heart" and second.options[second.answer] == " CO2"
    assert len(data.unlearning_questions(f"hf:{folder}:test", 1)) == 1
    with pytest.raises(SaelabError, match="could not load"):
        data.unlearning_questions(f"hf:{tmp_path}/missing:test")


def test_detect_language():
    english = "The cat sat on the mat and the dog was in the garden with the ball. " * 3
    german = "Der Hund ist nicht mit den Katzen und die Maus von der Stadt. " * 3
    assert bigbench.detect_language(english) == "en"
    assert bigbench.detect_language(german) == "de"
    assert bigbench.detect_language("12345") is None


def test_missing_sources_give_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(facts.PINS, "no-such-pkg", "1.0")
    with pytest.raises(SaelabError, match=r"pip install no-such-pkg==1\.0"):
        facts._require("no_such_pkg", "no-such-pkg")

    def offline_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(bigbench.subprocess, "run", offline_pip)
    with pytest.raises(SaelabError, match="No matching distribution.*copy bigbench-1.0.0.tar.gz"):
        bigbench._download(tmp_path / bigbench.SDIST)
