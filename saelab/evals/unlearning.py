"""Unlearning (Farrell et al. 2024, as in SAEBench): clamp forget-domain latents, re-ask questions.

Each question is scored by the probability the model gives its correct option, p = softmax over
the options' log-likelihoods (SAEBench's mean_predicted_probs; with unlearn_format="letters",
the mean over cyclic orderings of the letter probability). Only questions the clean model
answers right (under every ordering) count ("known"). The questions are split in two halves,
blocks of 4 alternating (every answer position in each half): the intervention grid is tried on
the select half only (its first unlearn_select_questions known questions per domain: the cost
cap), the chosen intervention is measured once on the whole report half (SAEBench picks on
train and reports on test), so the score is not the best of 12 noisy draws.

Metrics (eval_result_metrics["unlearning"]), on the report half unless named _select:
    unlearning_score: 1 - sum_i p_i(edited) / sum_i p_i(clean) over the known forget questions,
        for the intervention chosen on the select half: among those keeping the retain
        probability ratio (same form, known retain questions) >= unlearn_retain_threshold, the
        one with the lowest forget ratio; 0 when none qualifies or no latent fires
    forget_retained, retain_retained: the two probability ratios (1 = untouched)
    forget_accuracy, retain_accuracy: known questions still answered right
    n_features, multiplier, retain_sparsity: the chosen intervention (None when none)
    retain_threshold, n_qualifying_configs, n_forget_questions, n_retain_questions (known,
    report half), n_forget_select, n_retain_select (known, grid), clean_forget_accuracy,
    clean_retain_accuracy (every question of the pool)
Latents are clamped to -multiplier where they fire; the SAE error term is kept, so only the
clamp changes the model, and rows the clamp leaves bit-identical keep their clean scores.
Per-item values (block["items"]): per known report-half question, p edited and p clean.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
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
    item_entry,
    items_key,
    make_block,
    memo,
    model_key,
    residuals_batched,
    splice,
    stored,
)
from saelab.models import LanguageModel

LETTERS = "ABCD"
HALF_BLOCK = 4  # questions i with (i // 4) % 2 == 0 choose the intervention, the others report
DOMAINS = ("forget", "retain")


def run_unlearning(sae: SAELike, model: LanguageModel, layer: int, config: EvalConfig) -> dict:
    if config.unlearn_format not in ("likelihood", "letters"):
        raise ValueError(f"unlearn_format {config.unlearn_format!r}: use likelihood or letters")
    sets = {d: question_set(model, layer, d, config) for d in DOMAINS}
    forget = _texts(config.unlearn_forget_corpus, "forget", config.unlearn_texts)
    retain = _texts(config.unlearn_retain_corpus, "retain", config.unlearn_texts)
    forget_freq = latent_frequency(sae, model, layer, forget, config)
    retain_freq = latent_frequency(sae, model, layer, retain, config)
    results, edits = [], []
    grid = itertools.product(
        config.unlearn_retain_sparsities, config.unlearn_n_features, config.unlearn_multipliers
    )
    for sparsity, n, mult in grid:
        latents = select_latents(forget_freq, retain_freq, n, sparsity)
        edits.append(_edit(sae, latents, mult))
        cap = config.unlearn_select_questions
        found = {d: sets[d].measure(edits[-1], "select", cap) for d in DOMAINS}
        results.append(
            {
                "retain_sparsity": sparsity,
                "n_features": n,
                "multiplier": mult,
                "n_latents_found": len(latents),
                **{f"{d}_retained_select": found[d]["retained"] for d in DOMAINS},
                **{f"{d}_accuracy_select": found[d]["accuracy"] for d in DOMAINS},
            }
        )
    qualifying = [
        i
        for i, r in enumerate(results)
        if r["n_latents_found"] > 0
        and r["retain_retained_select"] is not None
        and r["forget_retained_select"] is not None
        and r["retain_retained_select"] >= config.unlearn_retain_threshold
    ]
    best = min(qualifying, key=lambda i: results[i]["forget_retained_select"], default=None)
    report = {d: sets[d].measure(None if best is None else edits[best], "report") for d in DOMAINS}
    chosen = results[best] if best is not None else {}
    forget_retained = report["forget"]["retained"]
    metrics = {
        "unlearning_score": 0.0 if forget_retained is None else 1.0 - forget_retained,
        "forget_retained": forget_retained,
        "retain_retained": report["retain"]["retained"],
        "forget_accuracy": report["forget"]["accuracy"],
        "retain_accuracy": report["retain"]["accuracy"],
        **{k: chosen.get(k) for k in ("n_features", "retain_sparsity", "multiplier")},
        "retain_threshold": config.unlearn_retain_threshold,
        "n_qualifying_configs": len(qualifying),
        "n_forget_questions": len(report["forget"]["p"]),
        "n_retain_questions": len(report["retain"]["p"]),
        "n_forget_select": len(
            sets["forget"].known_in("select")[: config.unlearn_select_questions]
        ),
        "n_retain_select": len(
            sets["retain"].known_in("select")[: config.unlearn_select_questions]
        ),
        "clean_forget_accuracy": sets["forget"].clean_accuracy,
        "clean_retain_accuracy": sets["retain"].clean_accuracy,
    }
    block = make_block("unlearning", sae, config, {"unlearning": metrics}, results)
    block["items"] = {
        f"unlearning.eval_result_metrics.unlearning.{key}": item_entry(
            sets[d].report_id, report[d]["p"], report[d]["p_clean"], form
        )
        for key, d, form in (
            ("unlearning_score", "forget", "one_minus"),
            ("retain_retained", "retain", "ratio"),
        )
    }
    return block


def _edit(sae: SAELike, latents: list[int], multiplier: float):  # noqa: ANN202 - resid -> resid
    return partial(splice, sae, keep_error=True, edit=_clamp(latents, multiplier))


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


def question_set(model: LanguageModel, layer: int, domain: str, config: EvalConfig) -> QuestionSet:
    """The domain's questions with their clean scores, built once per process (the clean
    scores are also kept in the shared eval cache: they do not depend on the SAE)."""
    source = getattr(config, f"unlearn_{domain}_questions")
    n = config.unlearn_questions if domain == "forget" else config.unlearn_retain_n
    key = ("unlearn", *model_key(model, layer), source, config.unlearn_format, n)

    def build() -> QuestionSet:
        questions = unlearning_questions(source, n)
        return QuestionSet(questions, _Scorer(model, layer, questions, config))

    return memo(key, build)


@dataclass
class QuestionSet:
    """Questions, their scorer, and the clean model's answers: which are known, p clean."""

    questions: list[MCQuestion]
    scorer: _Scorer

    def __post_init__(self) -> None:
        self.p_clean, self.known = self.scorer.probabilities(None)
        self.clean_accuracy = float(self.known.double().mean()) if len(self.known) else None
        report = self.known_in("report")
        self.report_id = items_key(*(self.questions[i].prompt for i in report.tolist()))

    def known_in(self, half: str) -> Tensor:
        """Indices of the known questions of a half ("select" | "report")."""
        index = torch.arange(len(self.questions))
        in_half = (index // HALF_BLOCK) % 2 == (0 if half == "select" else 1)
        return index[in_half & self.known]

    def measure(self, edit_resid, half: str, limit: int | None = None) -> dict:  # noqa: ANN001
        """p edited / clean of the half's first `limit` known questions (all: None), their
        ratio of sums ("retained", None without questions) and the fraction still answered
        right. edit_resid: resid -> resid, or None (clean)."""
        rows = self.known_in(half)[:limit]
        p, right = self.scorer.probabilities(edit_resid, rows)
        p_clean = self.p_clean[rows]
        total = p_clean.sum().item()
        return {
            "p": p,
            "p_clean": p_clean,
            "retained": p.sum().item() / total if len(rows) and total > 0 else None,
            "accuracy": float(right.double().mean()) if len(rows) else None,
        }


class _Scorer:
    """All (context, continuation) pairs of a question set, tokenized once, scored in batches."""

    def __init__(
        self, model: LanguageModel, layer: int, questions: list[MCQuestion], config: EvalConfig
    ):
        self.model, self.layer = model, layer
        self.batch_size, self.row_batch = config.batch_size, config.unlearn_batch_size
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
    def probabilities(self, edit_resid, questions: Tensor | None = None) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        """Per question (all, or the given indices): p of the right option (mean over views)
        and whether every view ranks it first, with `edit_resid` applied (None: clean)."""
        chosen = range(len(self.groups)) if questions is None else questions.tolist()
        rows = [s + j for q in chosen for s, n, _ in self.groups[q] for j in range(n)]
        scores = self._scores(edit_resid, torch.tensor(rows, dtype=torch.long))
        p, right = [], []
        for q in chosen:
            views = self.groups[q]
            probs = [scores[s : s + n].softmax(0)[answer].item() for s, n, answer in views]
            p.append(sum(probs) / len(probs))
            right.append(all(int(scores[s : s + n].argmax()) == a for s, n, a in views))
        return torch.tensor(p, dtype=torch.float64), torch.tensor(right, dtype=torch.bool)

    def correct(self, edit_resid) -> list[bool]:  # noqa: ANN001 - resid -> resid, or None
        """Per question: right under every view, with `edit_resid` applied (None: clean)."""
        return self.probabilities(edit_resid)[1].tolist()

    def _scores(self, edit_resid, rows: Tensor | None = None) -> Tensor:  # noqa: ANN001
        """Log-likelihood of each (context, option) pair. The clean scores are stored in the eval
        cache; under an edit, only `rows` (default all) are rescored, and of those only the ones
        it changes: clamping rare latents touches few rows, and the upper layers are the cost."""
        clean = stored("option_scores", self.fields, self._clean_scores)["scores"]
        if edit_resid is None:
            return clean
        scores = clean.clone()
        rows = torch.arange(len(self.spans)) if rows is None else rows
        for batch in self._batches(rows, self.batch_size):
            resid = edit_resid(self.resid[batch])
            real = self.mask[batch].bool()[..., None]  # padding the clamp moves is never read
            changed = ((resid != self.resid[batch]) & real).flatten(1).any(1)
            scores[batch[changed]] = torch.nan  # rescored below, in length-sorted batches
        stale = scores.isnan().nonzero()[:, 0]
        for batch in self._batches(stale, self.row_batch):
            scores[batch] = self._score_rows(batch, edit_resid(self.resid[batch]))
        return scores

    def _clean_scores(self) -> dict[str, Tensor]:
        rows = torch.arange(len(self.spans))
        scores = torch.zeros(len(rows))
        for batch in self._batches(rows, self.row_batch):
            scores[batch] = self._score_rows(batch, self.resid[batch])
        return {"scores": scores}

    def _batches(self, rows: Tensor, size: int) -> list[Tensor]:
        """`rows` in batches of similar length (less padding for the upper layers to run)."""
        order = rows[torch.argsort(torch.tensor([self.spans[r][1] for r in rows.tolist()]))]
        return list(order.split(size)) if len(order) else []

    def _score_rows(self, rows: Tensor, resid: Tensor) -> Tensor:
        """Summed log-probability of each row's option tokens; the head runs only at the
        positions that predict them, and the batch is cut to its longest row (right padding:
        causal attention never reads it)."""
        width = max(self.spans[r][1] for r in rows.tolist())
        keep = torch.zeros(len(rows), width, dtype=torch.bool)
        targets, owner = [], []
        for j, row in enumerate(rows.tolist()):
            start, end = self.spans[row]
            keep[j, start - 1 : end - 1] = True  # position t predicts token t + 1
            targets.append(self.ids[row, start:end])
            owner += [j] * (end - start)
        mask = self.mask[rows, :width]
        logits = self.model.logits_from(resid[:, :width], self.layer, mask, keep=keep)
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
