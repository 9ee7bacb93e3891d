"""The online path: Hugging Face datasets by name, behind the same interface as the offline sets.

Names (the config part is optional; a dataset id never contains ':'):
    texts      hf:<dataset>[:<config>]:<split>:<text field>
    probing    hf:<dataset>[:<config>]:<split>:<text field>:<label field>=<positive value>
    questions  hf:<dataset>[:<config>]:<split>        rows with question, choices, answer
               (the layout of cais/wmdp and cais/mmlu, SAEBench's unlearning sets)
Needs the hub (or a local datasets cache); here, without network, loading fails in one line.
"""

from __future__ import annotations

import random
from typing import Any

from saelab.cache import SaelabError

TEXTS = "hf:<dataset>[:<config>]:<split>:<text field>"
PROBING = "hf:<dataset>[:<config>]:<split>:<text field>:<label field>=<positive value>"
QUESTIONS = "hf:<dataset>[:<config>]:<split>"


def texts(name: str) -> list[str]:
    """Every value of one text field."""
    rows, (field,) = _load(name, 1, TEXTS)
    return [str(text) for text in rows[field]]


def labelled(name: str, n_per_class: int, seed: int) -> tuple[list[str], list[str]]:
    """(positives, negatives), n_per_class each at most, in a seeded order."""
    label_field, eq, positive = name.rsplit(":", 1)[-1].partition("=")
    if not eq:
        raise SaelabError(f"bad probing task {name!r}: the last part must be <label>=<value>")
    rows, (text_field, _) = _load(name, 2, PROBING)
    pos, neg = [], []
    for text, label in zip(rows[text_field], rows[label_field], strict=True):
        (pos if str(label) == positive else neg).append(str(text))
    for items in (pos, neg):
        random.Random(f"{seed}:{name}").shuffle(items)
    if min(len(pos), len(neg)) < 2:
        raise SaelabError(f"{name!r}: {len(pos)} positives and {len(neg)} negatives; need 2+ each")
    return pos[:n_per_class], neg[:n_per_class]


def questions(name: str, n: int | None) -> list[dict[str, Any]]:
    """MCQuestion fields from question/choices/answer rows, options as continuations."""
    rows, _ = _load(name, 0, QUESTIONS)
    missing = {"question", "choices", "answer"} - set(rows.column_names)
    if missing:
        raise SaelabError(f"{name!r}: no fields {sorted(missing)}; fields are {rows.column_names}")
    out = []
    for row in rows.select(range(min(n or len(rows), len(rows)))):
        out.append(
            {
                "prompt": f"Question: {row['question'].strip()}\nAnswer:",
                "options": [f" {str(choice).strip()}" for choice in row["choices"]],
                "answer": int(row["answer"]),
                "domain": name,
                "subject": name.split(":")[1],
            }
        )
    return out


def _load(name: str, n_fields: int, usage: str) -> tuple[Any, list[str]]:
    """(rows, the trailing field names) of a hf:... name; one-line errors for every failure."""
    parts = name.split(":")[1:]
    if len(parts) not in (n_fields + 2, n_fields + 3):
        raise SaelabError(f"bad dataset name {name!r}; use {usage}")
    fields = parts[len(parts) - n_fields :] if n_fields else []
    head = parts[: len(parts) - n_fields]
    dataset, config, split = head if len(head) == 3 else (head[0], None, head[1])
    try:
        import datasets
    except ImportError as err:
        raise SaelabError(f"{name!r} needs the 'datasets' package ({err})") from err
    try:
        rows = datasets.load_dataset(dataset, config, split=split)
    except Exception as err:  # the hub raises many types; all mean "cannot load this here"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SaelabError(
            f"could not load {name!r} ({first}); check the name and the network, or use "
            "the offline sets"
        ) from err
    # a probing name's last field is <label>=<value>: the column is the part before '='
    unknown = [f for f in fields if f.partition("=")[0] not in rows.column_names]
    if unknown:
        raise SaelabError(f"{name!r}: no field {unknown}; fields are {rows.column_names}")
    return rows, fields
