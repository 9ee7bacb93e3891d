"""Unlearning (Farrell et al. 2024, as in SAEBench): clamp forget-domain latents, re-ask questions.

Metrics (eval_result_metrics["unlearning"]):
    unlearning_score: 1 - forget accuracy of the best intervention whose retain accuracy stays
        >= unlearn_retain_threshold (0 when none qualifies or no latent fires)
    forget_accuracy, retain_accuracy, n_features, multiplier, retain_sparsity: that intervention
    retain_threshold, n_qualifying_configs, n_forget_questions, n_retain_questions (known ones)
Answers are scored by option log-likelihood (sum over the option's tokens) or, with
unlearn_format="letters", by the letter after a lettered list, right under every cyclic
permutation. Only questions the clean model answers right count. Latents are clamped to
-multiplier where they fire; the SAE error term is kept, so only the clamp changes the model.
"""

from __future__ import annotations

import itertools
from functools import partial

import torch
from torch import Tensor

from saelab.data import (
    MCQuestion,
    forget_texts,
    load_corpus,
    retain_texts,
    unlearning_questions,
)
from saelab.evals.common import (
    EvalConfig,
    SAELike,
    encode,
    input_fields,
    make_block,
    memo,
    model_key,
    residuals_batched,
    splice,
    stored,
)
from saelab.models import LanguageModel

LETTERS = "ABCD"


def run_unlearning(sae: SAELike, model: LanguageModel, layer: int, config: EvalConfig) -> dict:
    if config.unlearn_format not in ("likelihood", "letters"):
        raise ValueError(f"unlearn_format {config.unlearn_format!r}: use likelihood or letters")
    sources = {"forget": config.unlearn_forget_questions, "retain": config.unlearn_retain_questions}
    questions = {
        d: unlearning_questions(src, config.unlearn_questions) for d, src in sources.items()
    }
    # the clean answers do not depend on the SAE: score them once per process
    batches, known = {}, {}
    for domain, qs in questions.items():
        key = ("unlearn", *model_key(model, layer), sources[domain], config.unlearn_format, len(qs))
        batches[domain], known[domain] = memo(key, lambda qs=qs: _scored(model, layer, qs, config))
    forget = _texts(config.unlearn_forget_corpus, "forget", config.unlearn_texts)
    retain = _texts(config.unlearn_retain_corpus, "retain", config.unlearn_texts)
    forget_freq = latent_frequency(sae, model, layer, forget, config)
    retain_freq = latent_frequency(sae, model, layer, retain, config)
    results = []
    grid = itertools.product(
        config.unlearn_retain_sparsities, config.unlearn_n_features, config.unlearn_multipliers
    )
    for sparsity, n, mult in grid:
        latents = select_latents(forget_freq, retain_freq, n, sparsity)
        edit = _clamp(latents, mult)
        acc = {
            d: _accuracy(
                batches[d].correct(partial(splice, sae, keep_error=True, edit=edit)), known[d]
            )
            for d in batches
        }
        results.append(
            {
                "retain_sparsity": sparsity,
                "n_features": n,
                "multiplier": mult,
                "n_latents_found": len(latents),
                **{f"{d}_accuracy": a for d, a in acc.items()},
            }
        )
    qualifying = [
        r
        for r in results
        if r["retain_accuracy"] is not None
        and r["retain_accuracy"] >= config.unlearn_retain_threshold
        and r["forget_accuracy"] is not None
    ]
    best = min(qualifying, key=lambda r: r["forget_accuracy"], default=None)
    metrics = {
        "unlearning_score": 1.0 - best["forget_accuracy"] if best else 0.0,
        "forget_accuracy": best["forget_accuracy"] if best else None,
        "retain_accuracy": best["retain_accuracy"] if best else None,
        "n_features": best["n_features"] if best else None,
        "retain_sparsity": best["retain_sparsity"] if best else None,
        "multiplier": best["multiplier"] if best else None,
        "retain_threshold": config.unlearn_retain_threshold,
        "n_qualifying_configs": len(qualifying),
        "n_forget_questions": sum(known["forget"]),
        "n_retain_questions": sum(known["retain"]),
        "clean_forget_accuracy": _mean(known["forget"]),
        "clean_retain_accuracy": _mean(known["retain"]),
    }
    return make_block("unlearning", sae, config, {"unlearning": metrics}, results)


@torch.no_grad()
def latent_frequency(
    sae: SAELike, model: LanguageModel, layer: int, texts: list[str], config: EvalConfig
) -> Tensor:
    """Fraction of real tokens (BOS and padding excluded) on which each latent fires [F]."""
    ids, mask = model.tokenize(texts, config.unlearn_seq_len)
    resid = residuals_batched(model, ids, mask, layer, config.batch_size)[:, 1:]
    mask = mask[:, 1:].cpu().float()
    fires = torch.zeros(sae.d_sae)
    for i in range(0, resid.shape[0], config.batch_size):
        active = (encode(sae, resid[i : i + config.batch_size]) != 0).float()
        fires += (active * mask[i : i + config.batch_size, :, None]).sum((0, 1))
    return fires / mask.sum().clamp(min=1)


def _texts(source: str, builtin: str, n: int) -> list[str]:
    if source == builtin:
        return forget_texts(n) if builtin == "forget" else retain_texts(n)
    return load_corpus(source)[:n]


def select_latents(forget: Tensor, retain: Tensor, n: int, retain_sparsity: float) -> list[int]:
    """Up to n latents rare on retain text, most frequent on forget text first."""
    score = torch.where((retain < retain_sparsity) & (forget > 0), forget, -1.0)
    order = torch.argsort(score, descending=True)[:n]
    return [int(i) for i in order if score[i] > 0]


def _clamp(latents: list[int], multiplier: float):  # noqa: ANN202 - a latent edit
    def edit(f: Tensor) -> Tensor:
        if not latents:
            return f
        f = f.clone()
        chosen = f[..., latents]
        f[..., latents] = torch.where(chosen > 0, torch.full_like(chosen, -multiplier), chosen)
        return f

    return edit


def _scored(
    model: LanguageModel, layer: int, questions: list[MCQuestion], config: EvalConfig
) -> tuple[_Scorer, list[bool]]:
    scorer = _Scorer(model, layer, questions, config)
    return scorer, scorer.correct(None)


def _accuracy(correct: list[bool], known: list[bool]) -> float | None:
    kept = [c for c, k in zip(correct, known, strict=True) if k]
    return _mean(kept)


def _mean(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


class _Scorer:
    """All (context, continuation) pairs of a question set, tokenized once, scored in batches."""

    def __init__(
        self, model: LanguageModel, layer: int, questions: list[MCQuestion], config: EvalConfig
    ):
        self.model, self.layer, self.batch_size = model, layer, config.batch_size
        # groups[q] = list of (first pair index, n options, right option) views of question q
        self.groups: list[list[tuple[int, int, int]]] = []
        pairs: list[tuple[list[int], list[int]]] = []
        for q in questions:
            views = []
            for context, options, answer in _views(q, config.unlearn_format):
                views.append((len(pairs), len(options), answer))
                pairs += [self._encode(context, option) for option in options]
            self.groups.append(views)
        width = 1 + max(len(c) + len(o) for c, o in pairs)
        self.ids = torch.zeros(len(pairs), width, dtype=torch.long)
        self.mask = torch.zeros(len(pairs), width, dtype=torch.long)
        self.spans = []
        for row, (context, option) in enumerate(pairs):
            seq = [model.bos_token_id, *context, *option]
            self.ids[row, : len(seq)] = torch.tensor(seq)
            self.mask[row, : len(seq)] = 1
            self.spans.append((1 + len(context), len(seq)))
        self.resid = residuals_batched(model, self.ids, self.mask, layer, self.batch_size)
        self.fields = input_fields(model, layer, self.ids, self.mask)

    def _encode(self, context: str, option: str) -> tuple[list[int], list[int]]:
        tok = self.model.tokenizer
        ctx = tok(context, add_special_tokens=False).input_ids
        full = tok(context + option, add_special_tokens=False).input_ids
        return ctx, full[len(ctx) :]

    @torch.no_grad()
    def correct(self, edit_resid) -> list[bool]:  # noqa: ANN001 - resid -> resid, or None
        """Per question: right under every view, with `edit_resid` applied (None: clean)."""
        scores = self._scores(edit_resid)
        return [
            all(int(scores[s : s + n].argmax()) == answer for s, n, answer in views)
            for views in self.groups
        ]

    def _scores(self, edit_resid) -> Tensor:  # noqa: ANN001
        """Log-likelihood of each (context, option) pair. The clean scores are stored in the eval
        cache; under an edit, rows it leaves bit-identical keep their clean score: clamping rare
        latents touches few rows, and the upper layers with the 262k-vocab head are the cost."""
        clean = stored("option_scores", self.fields, self._clean_scores)["scores"]
        if edit_resid is None:
            return clean
        scores = clean.clone()
        for rows in self._batches():
            resid = edit_resid(self.resid[rows])
            changed = (resid != self.resid[rows]).flatten(1).any(1)
            if changed.any():
                scores[rows[changed]] = self._score_rows(rows[changed], resid[changed])
        return scores

    def _clean_scores(self) -> dict[str, Tensor]:
        parts = [self._score_rows(rows, self.resid[rows]) for rows in self._batches()]
        return {"scores": torch.cat(parts)}

    def _batches(self) -> list[Tensor]:
        n = len(self.spans)
        return [torch.arange(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]

    def _score_rows(self, rows: Tensor, resid: Tensor) -> Tensor:
        """Summed log-probability of each row's option tokens; the head runs only at the
        positions that predict them."""
        keep = torch.zeros(len(rows), self.ids.shape[1], dtype=torch.bool)
        targets, owner = [], []
        for j, row in enumerate(rows.tolist()):
            start, end = self.spans[row]
            keep[j, start - 1 : end - 1] = True  # position t predicts token t + 1
            targets.append(self.ids[row, start:end])
            owner += [j] * (end - start)
        logits = self.model.logits_from(resid, self.layer, self.mask[rows], keep=keep)
        logp = logits.float().log_softmax(-1).cpu().gather(-1, torch.cat(targets)[:, None])[:, 0]
        return torch.zeros(len(rows)).index_add_(0, torch.tensor(owner), logp)


def _views(q: MCQuestion, fmt: str) -> list[tuple[str, list[str], int]]:
    if fmt == "likelihood":
        return [(q.prompt, q.options, q.answer)]
    views = []
    for shift in range(len(q.options)):
        order = q.options[shift:] + q.options[:shift]
        listing = "\n".join(f"{LETTERS[i]}. {o.strip()}" for i, o in enumerate(order))
        answer = order.index(q.options[q.answer])
        letters = [f" {LETTERS[i]}" for i in range(len(order))]
        views.append((f"{q.prompt} ...?\n{listing}\nAnswer:", letters, answer))
    return views
