"""Text from the BIG-bench sdist on PyPI, read straight out of the archive (never installed).

BIG-bench task files ask not to be used as language-model training data. We never train a
language model on them: the lab only trains sparse autoencoders on the activations of a
frozen model, and every item used for evaluation is kept out of that SAE training corpus.

`read_sources()` returns plain lists keyed by source name:
  wikipedia        [lang, text] pairs, Wikipedia articles in 9 languages (paragraph_segmentation)
  squad:<genre>    paragraphs from SQuAD-shifts: wiki, nyt, reddit, amazon
  coqa             CoQA stories (children's stories, news, literature, exams)
  ni_passages      DROP, Quoref, CosmosQA, ROPES passages (natural_instructions subtasks)
  topical_chat     whole Topical-Chat conversations
  wikihow          WikiLingua English (wikiHow articles)
  multiemo         [label, text] pairs, English reviews labelled positive/negative/...
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from saelab.cache import SaelabError, atomic_write, file_lock, sealed_dir, sha256_file

log = logging.getLogger(__name__)

VERSION = "1.0.0"
SDIST = f"bigbench-{VERSION}.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
TASKS = f"bigbench-{VERSION}/bigbench/benchmark_tasks/"

# The Wikipedia dump in paragraph_segmentation holds 9 languages; Russian is told apart by
# script, the others by a vote over a few very frequent function words.
_STOPWORDS = {
    "en": "the of and to in is was for that with",
    "de": "der die und das ist nicht mit den von sich",
    "fr": "le la les et des est une du dans pour",
    "es": "el la los las y del que en por una",
    "it": "il di che la è per del della un gli",
    "nl": "de het een van en is dat op zijn niet",
    "pl": "i w się na z nie do to jest że",
    "pt": "o a os de que do da em não uma",
}
_STOPWORD_SETS = {lang: set(words.split()) for lang, words in _STOPWORDS.items()}
_CYRILLIC = re.compile(r"[\u0400-\u04FF]")

# natural_instructions inputs start with the passage, then the question or story
_NI_PASSAGE = re.compile(
    r"^(?:Passage|Context|Paragraph-|Background Paragraph):\s*(.*?)\s*\n(?:Question|Story)", re.S
)
_NI_TASKS = ("quoref", "drop", "cosmosqa", "ropes")


def sdist_path() -> Path:
    """The verified BIG-bench sdist in the cache, downloaded with pip on first use."""
    path = sealed_dir("data", "downloads") / SDIST  # it holds the probing texts: sealed
    with file_lock(path):
        if path.is_file() and sha256_file(path) == SDIST_SHA256:
            return path
        _download(path)
    return path


def _download(path: Path) -> None:
    log.info("downloading %s from PyPI (358 MB, once)", SDIST)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"bigbench=={VERSION}", "--no-deps"]
        cmd += ["--no-binary", ":all:", "--quiet", "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / SDIST
        if result.returncode != 0 or not got.is_file():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise SaelabError(
                f"could not download bigbench=={VERSION} with pip ({last}); "
                f"copy {SDIST} (sha256 {SDIST_SHA256[:12]}...) to {path.parent}"
            )
        if sha256_file(got) != SDIST_SHA256:
            raise SaelabError(f"{SDIST} from PyPI has an unexpected sha256; refusing to use it")
        atomic_write(path, lambda tmp_path: got.replace(tmp_path))


def detect_language(text: str) -> str | None:
    """The language of a Wikipedia article by stopword vote, or None when unclear."""
    if len(_CYRILLIC.findall(text[:500])) > 100:
        return "ru"
    words = text[:3000].lower().split()
    votes = {lang: sum(w in stop for w in words) for lang, stop in _STOPWORD_SETS.items()}
    ranked = sorted(votes.items(), key=lambda kv: -kv[1])
    (best, top), (_, second) = ranked[0], ranked[1]
    return best if top >= 10 and top >= 1.5 * second else None


def _wikipedia(task: dict) -> list[list[str]]:
    articles = []
    for example in task["examples"]:
        text = _paragraphs(example["input"].split("\n"), str(example["target"]).split())
        lang = detect_language(text)
        if lang is not None:
            articles.append([lang, text])
    return articles


def _paragraphs(sentences: list[str], ends: list[str]) -> str:
    # target labels mark the last sentence of each paragraph with "1"
    out = []
    for i, sentence in enumerate(s for s in sentences if s.strip()):
        out.append(sentence.strip())
        out.append("\n\n" if i < len(ends) and ends[i] == "1" else " ")
    return "".join(out).strip()


def _squad(data: dict) -> list[str]:
    return [p["context"] for article in data["data"] for p in article["paragraphs"]]


def _coqa(data: dict) -> list[str]:
    return [story["story"] for story in data["data"]]


def _ni_passages(task: dict) -> list[str]:
    found = (_NI_PASSAGE.match(example["input"]) for example in task["examples"])
    return [m.group(1) for m in found if m]


def _topical_chat(task: dict) -> list[str]:
    # Examples are growing prefixes of each conversation; the last one of a conversation
    # plus its target is the whole conversation. A one-turn input starts a new conversation.
    conversations, last = [], None
    for example in task["examples"]:
        if example["input"].count("agent_") == 1 and last is not None:
            conversations.append(_conversation(last))
        last = example
    conversations.append(_conversation(last))
    return conversations


def _conversation(example: dict) -> str:
    history = example["input"].replace(" agent_", "\nagent_")
    speaker = "B" if history.rsplit("agent_", 1)[1].startswith("A") else "A"
    target = example["target"] if isinstance(example["target"], str) else example["target"][0]
    return f"{history}\nagent_{speaker}: {target}"


def _wikihow(task: dict) -> list[str]:
    return [example["input"] for example in task["examples"]]


def _multiemo(task: dict) -> list[list[str]]:
    labelled = []
    for example in task["examples"]:
        scores = example["target_scores"]
        labelled.append([max(scores, key=scores.get), example["input"]])
    return labelled


# archive member (under TASKS) -> (source name, parser)
_SQUAD_GENRES = {
    "new_wiki_v1.0": "wiki",
    "squaddev_v1.1": "wiki",
    "nyt_v1.0": "nyt",
    "reddit_v1.0": "reddit",
    "amazon_reviews_v1.0": "amazon",
}
MEMBERS: dict[str, tuple[str, Callable[[dict], list]]] = {
    "paragraph_segmentation/task.json": ("wikipedia", _wikipedia),
    "coqa_conversational_question_answering/coqa.test.json": ("coqa", _coqa),
    "topical_chat/task.json": ("topical_chat", _topical_chat),
    "gem/wikilingua_en/task.json": ("wikihow", _wikihow),
    "multiemo/all_text_en/task.json": ("multiemo", _multiemo),
    **{f"squad_shifts/{f}.json": (f"squad:{g}", _squad) for f, g in _SQUAD_GENRES.items()},
}


def _source_for(member: str) -> tuple[str, Callable[[dict], list]] | None:
    if member in MEMBERS:
        return MEMBERS[member]
    parts = member.split("/")
    if parts[0] == "natural_instructions" and parts[-1] == "task.json":
        if any(f"_{name}_" in parts[1] for name in _NI_TASKS):
            return "ni_passages", _ni_passages
    return None


def read_sources() -> dict[str, list]:
    """Parse every source out of the sdist in one streaming pass (~10 s)."""
    sources: dict[str, list] = {}
    with tarfile.open(sdist_path(), "r|gz") as archive:
        for info in archive:
            if not (info.isfile() and info.name.startswith(TASKS)):
                continue
            found = _source_for(info.name[len(TASKS) :])
            if found is None:
                continue
            name, parse = found
            task = json.load(archive.extractfile(info))
            sources.setdefault(name, []).extend(parse(task))
    missing = {name for name, _ in MEMBERS.values()} - sources.keys()
    if missing:
        raise SaelabError(f"{SDIST} lacks {sorted(missing)}; delete it from the cache to refetch")
    return sources
