"""Sparse probing: can a logistic regression on a few SAE latents solve binary text tasks?

Metrics (eval_result_metrics):
    llm: llm_test_accuracy, llm_top_{k}_test_accuracy   (raw residual dimensions, the baseline)
    sae: sae_test_accuracy, sae_top_{k}_test_accuracy   (SAE latents)
for k in config.probe_ks (1, 2, 5, 10, 20), averaged over tasks; per-task figures in details.
Features are mean-pooled over real tokens (BOS and padding masked); the top-k features are
those with the largest |mean_pos - mean_neg| on the training split.
Per-item values (block["items"]): per test example, whether the SAE probe (all latents, top-1)
got it right, one component per task.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from saelab.data import ProbingTask, probing_tasks
from saelab.evals.common import (
    EvalConfig,
    SAELike,
    encode,
    item_entry,
    items_key,
    make_block,
    residuals_batched,
)
from saelab.models import LanguageModel

ITEM_KEYS = ("sae_test_accuracy", "sae_top_1_test_accuracy")  # the key metrics with items


def run_sparse_probing(sae: SAELike, model: LanguageModel, layer: int, config: EvalConfig) -> dict:
    names = list(config.probe_tasks) if config.probe_tasks is not None else None
    tasks = probing_tasks(names, n_per_class=config.probe_n_per_class)
    results = {name: probe_task(sae, model, layer, task, config) for name, task in tasks.items()}
    correct = {name: result.pop("correct") for name, result in results.items()}
    details = [{"dataset_name": name, **result} for name, result in results.items()]
    metrics: dict = {"llm": {}, "sae": {}}
    for source in ("llm", "sae"):
        keys = [f"{source}_test_accuracy"] + [
            f"{source}_top_{k}_test_accuracy" for k in config.probe_ks
        ]
        for key in keys:
            metrics[source][key] = float(np.mean([d[key] for d in details]))
    block = make_block("sparse_probing", sae, config, metrics, details)
    block["items"] = _items(tasks, correct)
    return block


def _items(tasks: dict[str, ProbingTask], correct: dict[str, dict[str, np.ndarray]]) -> dict:
    """Per test example correctness, one component per task (the metric is the mean of the
    tasks' accuracies); tasks of unequal test size cannot share items, so they get none."""
    if len({len(task.y_test) for task in tasks.values()}) != 1:
        return {}
    item_id = items_key(*(text for task in tasks.values() for text in task.texts_test))
    return {
        f"sparse_probing.eval_result_metrics.sae.{key}": item_entry(
            item_id, np.stack([correct[name][key] for name in tasks])
        )
        for key in ITEM_KEYS
    }


@torch.no_grad()
def probe_task(
    sae: SAELike, model: LanguageModel, layer: int, task: ProbingTask, config: EvalConfig
) -> dict:
    resid_tr, mask_tr = _pooled_inputs(model, layer, task.texts_train, config)
    resid_te, mask_te = _pooled_inputs(model, layer, task.texts_test, config)
    y_tr, y_te = np.array(task.y_train), np.array(task.y_test)
    features = {
        "llm": (_pool(resid_tr, mask_tr), _pool(resid_te, mask_te)),
        "sae": (
            _sae_pool(sae, resid_tr, mask_tr, config),
            _sae_pool(sae, resid_te, mask_te, config),
        ),
    }
    out, correct = {}, {}
    for source, (x_tr, x_te) in features.items():
        found = {f"{source}_test_accuracy": _probe(x_tr, y_tr, x_te, y_te)}
        ranking = np.argsort(-np.abs(x_tr[y_tr == 1].mean(0) - x_tr[y_tr == 0].mean(0)))
        for k in config.probe_ks:
            top = ranking[:k]
            found[f"{source}_top_{k}_test_accuracy"] = _probe(
                x_tr[:, top], y_tr, x_te[:, top], y_te
            )
        correct.update(found)
        out.update({key: float(right.mean()) for key, right in found.items()})
    return {**out, "correct": {key: correct[key] for key in ITEM_KEYS if key in correct}}


def _pooled_inputs(
    model: LanguageModel, layer: int, texts: list[str], config: EvalConfig
) -> tuple[Tensor, Tensor]:
    ids, mask = model.tokenize(texts, config.probe_seq_len)
    resid = residuals_batched(model, ids, mask, layer, config.batch_size)
    return resid[:, 1:], mask[:, 1:].cpu().float()  # BOS dropped, as the SAE was trained


def _pool(values: Tensor, mask: Tensor) -> np.ndarray:
    summed = (values.float() * mask[..., None]).sum(1)
    return (summed / mask.sum(1, keepdim=True).clamp(min=1)).numpy()


def _sae_pool(sae: SAELike, resid: Tensor, mask: Tensor, config: EvalConfig) -> np.ndarray:
    rows = range(0, resid.shape[0], config.batch_size)
    parts = [
        _pool(encode(sae, resid[i : i + config.batch_size]), mask[i : i + config.batch_size])
        for i in rows
    ]
    return np.concatenate(parts)


def _probe(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> np.ndarray:
    """Whether the probe gets each test example right [n_test] (1.0 / 0.0)."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
    clf.fit(x_tr, y_tr)
    return (clf.predict(x_te) == y_te).astype(np.float64)
