"""The ``unlearn`` metric: forget and retain accuracy on the fact-unlearning benchmark's
four-way questions (WMDP's format, chance 0.25), and free-form QA accuracy.

* ``forget_accuracy`` — share of the forget topics' questions whose answer letter is the
  most likely of `` A`` .. `` D`` after ``Answer:`` (lower is better: the unlearned
  knowledge is gone at 0.25, chance);
* ``retain_accuracy`` — the same on the retain topics (higher is better: the MMLU role);
* ``forget_qa`` / ``retain_qa`` — share of the facts whose answer the model still produces
  greedily after the prompt (every answer token its argmax); with ``known_only`` both are 1
  on the unmodified model by construction.

``scoring=cloze`` scores each option's text after the fact's prompt instead of the letters
(lm-eval's ``acc``: summed log-likelihood), as small models are scored on MMLU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmcompose.api import Context, Metric
from lmcompose.metrics.edits import target_text

from lmcompose_unlearn.config import UnlearnMetricsConfig
from lmcompose_unlearn.facts import LETTERS, Question, benchmark_for, known_facts

if TYPE_CHECKING:
    from lmcompose import LM

__all__ = ["UnlearnMetrics", "choice_loglik", "multiple_choice"]


def choice_loglik(lm: LM, items: Sequence[tuple[list[int], list[list[int]]]], batch_size: int) -> list[list[float]]:
    """For each (context ids, [continuation ids, ...]): each continuation's summed
    log-likelihood after the context. Contexts whose continuations are all one token are
    scored from one forward pass (the letters); others run one sequence per continuation."""
    import torch
    from lmcompose.editing import pad_id

    pad = pad_id(lm.tokenizer)
    out: list[list[float] | None] = [None] * len(items)
    single = [i for i, (_, conts) in enumerate(items) if all(len(c) == 1 for c in conts)]
    rows: list[tuple[int, int, list[int], int]] = []  # (item, continuation, ids, context length)
    for i, (ctx_ids, conts) in enumerate(items):
        if i not in set(single):
            rows += [(i, j, ctx_ids + cont, len(ctx_ids)) for j, cont in enumerate(conts)]
    with torch.no_grad():
        for start in range(0, len(single), batch_size):
            chunk = single[start : start + batch_size]
            seqs = [items[i][0] for i in chunk]
            ids, attn = _right_padded(seqs, pad, lm.device)
            logits = lm.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            last = attn.sum(dim=1) - 1
            logp = torch.log_softmax(logits[torch.arange(len(chunk)), last].float(), dim=-1)
            for k, i in enumerate(chunk):
                out[i] = [float(logp[k, c[0]]) for c in items[i][1]]
        scores: dict[tuple[int, int], float] = {}
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            ids, attn = _right_padded([r[2] for r in chunk], pad, lm.device)
            logp = torch.log_softmax(lm.model(input_ids=ids, attention_mask=attn, use_cache=False).logits.float(), -1)
            for k, (i, j, seq, n_ctx) in enumerate(chunk):
                pos = torch.arange(n_ctx - 1, len(seq) - 1, device=logp.device)
                tgt = torch.tensor(seq[n_ctx:], device=logp.device)
                scores[(i, j)] = float(logp[k, pos, tgt].sum())
        for i, (_, conts) in enumerate(items):
            if out[i] is None:
                out[i] = [scores[(i, j)] for j in range(len(conts))]
    return [o for o in out if o is not None]


def _right_padded(seqs: Sequence[list[int]], pad: int, device: Any) -> tuple[Any, Any]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, : len(s)] = 1
    return ids.to(device), attn.to(device)


def multiple_choice(lm: LM, questions: Sequence[Question], scoring: str, batch_size: int) -> list[bool]:
    """Per question: whether the most likely option is the right one (ties: the first)."""
    tok = lm.tokenizer
    items = []
    for q in questions:
        if scoring == "letter":
            ctx_ids = list(tok(q.text(), add_special_tokens=True).input_ids)
            conts = [list(tok(" " + letter, add_special_tokens=False).input_ids) for letter in LETTERS]
        else:
            ctx_ids = list(tok(q.fact.prompt, add_special_tokens=True).input_ids)
            conts = [list(tok(target_text(q.fact.prompt, c), add_special_tokens=False).input_ids) for c in q.choices]
        items.append((ctx_ids, conts))
    scores = choice_loglik(lm, items, batch_size)
    return [max(range(len(s)), key=lambda j: (s[j], -j)) == q.answer for s, q in zip(scores, questions, strict=True)]


def _share(hits: Sequence[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


class UnlearnMetrics(Metric):
    """Forget accuracy (lower is better), retain accuracy, and free-form QA on the
    fact-unlearning benchmark (docs/unlearning.md). Options as every unlearner's benchmark
    fields, so both build the same benchmark by default."""

    name = "unlearn"
    keys = ("forget_accuracy", "retain_accuracy", "forget_qa", "retain_qa")
    higher_is_better = {"forget_accuracy": False, "retain_accuracy": True, "forget_qa": False, "retain_qa": True}
    Config = UnlearnMetricsConfig

    def reference(self, lm: LM, ctx: Context) -> None:
        """Build the benchmark on the unmodified model (the facts it knows)."""
        benchmark_for(self.config, lm, ctx)

    def compute(self, lm: LM, ctx: Context) -> dict[str, float | None]:
        from lmcompose_unlearn.intervention import TRAINED_ON

        c = self.config
        bench = benchmark_for(self.config, lm, ctx)
        trained = ctx.state.get(TRAINED_ON)
        if trained is not None and tuple(trained[0]) != tuple(bench.forget_topics):
            ctx.note(
                f"metric 'unlearn' scores forget topics {list(bench.forget_topics)} but step '{trained[2]}' unlearned "
                f"{list(trained[0])}: give both the same benchmark fields (e.g. {trained[2]}:forget_topics=... and, in "
                "the -c file, metric_options: {unlearn: {forget_topics: [...]}})"
            )
        out: dict[str, float | None] = {
            "forget_accuracy": _share(multiple_choice(lm, bench.forget_questions, c.scoring, c.batch_size)),
            "retain_accuracy": _share(multiple_choice(lm, bench.retain_questions, c.scoring, c.batch_size)),
        }
        if c.qa:
            out["forget_qa"] = _share(known_facts(lm, bench.forget, c.batch_size))
            out["retain_qa"] = _share(known_facts(lm, bench.retain, c.batch_size))
        return out
