"""Edit success, generalization and locality, with the f1, accuracy, prob and drift scorers.

All definitions are in docs/metrics.md. Targets are tokenized on their own with a leading
space (unless the prompt ends in whitespace) and appended to the prompt's tokens, as in
ROME/MEMIT, so the boundary never merges into one token.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from lmcompose.api import PER_EDIT_KEY, Context, EditRecord, Metric

if TYPE_CHECKING:
    from lmcompose.models.handle import LM

__all__ = ["EditMetrics", "EditMetricsConfig", "Scorer", "multi_hop_prompt", "target_text"]

SCORERS = ("f1", "accuracy", "prob")
MULTI_HOP_TOKENS = 8


@dataclass
class EditMetricsConfig:
    scorer: Literal["f1", "accuracy", "prob"] = field(
        default="f1",
        metadata={
            "help": "scorer behind edit_success and generalization: f1 (the paper's: greedy generation, token-bag "
            "F1), accuracy (teacher-forced token accuracy), prob (P(new) > P(true))"
        },
    )
    locality_scorer: Literal["f1", "accuracy", "prob", "drift"] = field(
        default="f1",
        metadata={"help": "scorer behind locality; drift = share of next-token argmaxes unchanged from the base model"},
    )
    batch_size: int = field(
        default=16, metadata={"help": "prompts per forward pass / generate call", "range": (1, 4096)}
    )


def target_text(prompt: str, target: str) -> str:
    """The target as it is tokenized after ``prompt``: stripped, with a leading space unless
    the prompt ends in whitespace (editors and metrics must agree on this)."""
    target = target.strip()
    return target if (not prompt or prompt[-1].isspace()) else " " + target


class Scorer:
    """Batched teacher forcing and greedy generation on one LM."""

    def __init__(self, lm: LM, batch_size: int):
        import torch

        self.torch = torch
        self.lm = lm
        self.tok = lm.tokenizer
        self.batch_size = batch_size
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.special = set(self.tok.all_special_ids)
        self._excluded: dict[int, bool] = {}

    def encode(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        p = self.tok(prompt, add_special_tokens=True).input_ids
        t = self.tok(target_text(prompt, target), add_special_tokens=False).input_ids
        return p, t

    def teacher_forced(self, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """For each (prompt, target): mean token NLL of the target, token accuracy, and the
        argmax at every predicted position of prompt+target.

        Sequences are batched shortest first (results in the order given): CounterFact's
        prompts vary in length, and batching them as they come pads a third of the tokens."""
        torch = self.torch
        encoded = [self.encode(p, t) for p, t in pairs]
        order = sorted(range(len(encoded)), key=lambda j: len(encoded[j][0]) + len(encoded[j][1]))
        scored: dict[int, dict[str, Any]] = {}
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            seqs = [encoded[j][0] + encoded[j][1] for j in batch]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            logits = self.lm.model(ids.to(self.lm.device), attention_mask=mask.to(self.lm.device)).logits.float().cpu()
            for i, j in enumerate(batch):
                p, t = encoded[j]
                n = len(p) + len(t)
                tgt = torch.tensor(t)
                row = logits[i, : n - 1]
                argmax = row.argmax(-1)
                at = row[len(p) - 1 :]  # the positions that predict the target
                token_logp = torch.log_softmax(at, dim=-1)[torch.arange(len(t)), tgt]
                scored[j] = {
                    "nll": float(-token_logp.mean()),
                    "accuracy": float((argmax[len(p) - 1 :] == tgt).float().mean()),
                    "argmax": argmax.tolist(),
                }
        return [scored[j] for j in range(len(encoded))]

    def generate(self, prompts: list[str], lengths: list[int]) -> list[list[int]]:
        """Greedy continuation of each prompt, ``lengths[i]`` new tokens (batched, left-padded)."""
        return self.generate_ids([self.tok(p, add_special_tokens=True).input_ids for p in prompts], lengths)

    def generate_ids(self, prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
        """Greedy continuation of each token-id prompt, ``lengths[i]`` new tokens."""
        torch = self.torch
        outs: list[list[int]] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            want = lengths[start : start + self.batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, p in enumerate(chunk):
                ids[i, width - len(p) :] = torch.tensor(p)
                mask[i, width - len(p) :] = 1
            gen = self.lm.model.generate(
                input_ids=ids.to(self.lm.device),
                attention_mask=mask.to(self.lm.device),
                max_new_tokens=max(want),
                do_sample=False,
                pad_token_id=self.pad,
            )[:, width:].cpu()
            outs.extend(gen[i, :n].tolist() for i, n in enumerate(want))
        return outs

    def generate_for(self, pairs: list[tuple[str, str]], forced: list[dict[str, Any]] | None = None) -> list[list[int]]:
        """Greedy continuation of each prompt, clipped to its target's token length.

        With ``forced`` (``teacher_forced(pairs)``), the argmaxes of prompt + target already
        give the greedy tokens for as long as they agree with the target, and the first token
        that disagrees: only pairs that disagree before their last token are generated on,
        from the prompt plus the tokens found so far. Single-token targets need no generation."""
        encoded = [self.encode(p, t) for p, t in pairs]
        if forced is None:
            return self.generate([p for p, _ in pairs], [len(t) for _, t in encoded])
        outs: list[list[int]] = []
        rest: list[int] = []
        for j, ((p, t), f) in enumerate(zip(encoded, forced, strict=True)):
            got: list[int] = []
            for k in range(len(t)):
                got.append(f["argmax"][len(p) - 1 + k])
                if got[-1] != t[k]:
                    break
            outs.append(got)
            if len(got) < len(t):
                rest.append(j)
        more = self.generate_ids(
            [encoded[j][0] + outs[j] for j in rest], [len(encoded[j][1]) - len(outs[j]) for j in rest]
        )
        for j, m in zip(rest, more, strict=True):
            outs[j] = outs[j] + m
        return outs

    def excluded(self, token: int) -> bool:
        """Tokens F1 leaves out: special ones (pad, BOS, EOS) and any that decode to nothing
        but space, such as a sentencepiece tokenizer's bare "▁" (Llama-2's 29871)."""
        if token not in self._excluded:
            self._excluded[token] = token in self.special or not self.tok.decode([token]).strip()
        return self._excluded[token]

    def f1(self, generated: list[int], target: list[int]) -> float:
        """Token-set F1 as the paper's code scores it: excluded tokens are dropped from both
        sides, the generation is clipped to the target's remaining length, and the two are
        compared as sets (a repeated token counts once)."""
        t = [i for i in target if not self.excluded(i)]
        g = [i for i in generated if not self.excluded(i)][: len(t)]
        gs, ts = set(g), set(t)
        common = len(gs & ts)
        if common == 0:
            return 0.0
        precision, recall = common / len(gs), common / len(ts)
        return 2 * precision * recall / (precision + recall)


def multi_hop_prompt(question: str) -> str:
    """The prompt a multi-hop question is asked with."""
    return f"Q: {question}\nA:"


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _per_record(values: list[float], owners: list[int], n: int) -> list[float | None]:
    """Mean per record of the values each record owns (None for a record that owns none)."""
    sums, counts = [0.0] * n, [0] * n
    for v, o in zip(values, owners, strict=True):
        sums[o] += v
        counts[o] += 1
    return [s / c if c else None for s, c in zip(sums, counts, strict=True)]


def _record_mean(per_record: list[float | None]) -> float | None:
    """The metric's value: the mean over the records that have a score."""
    return _mean([v for v in per_record if v is not None])


def _locality_pairs(records: list[EditRecord]) -> tuple[list[int], list[tuple[str, str]]]:
    """(owner record index, (prompt, answer)) of every locality prompt, in record order."""
    owners, pairs = [], []
    for i, r in enumerate(records):
        for lp in r.locality:
            owners.append(i)
            pairs.append((lp.prompt, lp.answer))
    return owners, pairs


def _reference_key(records: list[EditRecord]) -> tuple[str, str]:
    """Where the base-model locality reference of a batch lives in ``ctx.state``: under a digest
    of its locality prompts and answers in order, what the reference is computed from. Two
    batches share a reference only when they would compute the same one; case ids are no key
    (a file may repeat them, and two batches with equal ids once shared one reference)."""
    _owners, pairs = _locality_pairs(records)
    digest = hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode()).hexdigest()
    return ("locality_reference", digest)


class EditMetrics(Metric):
    """Edit success, generalization, locality (f1/accuracy/prob/drift), edit NLL, multi-hop."""

    name = "edit"
    keys = (
        "edit_success",
        "generalization",
        "locality",
        "edit_nll",
        *(f"edit_success_{s}" for s in SCORERS),
        *(f"generalization_{s}" for s in SCORERS),
        *(f"locality_{s}" for s in SCORERS),
        "locality_drift",
        "multi_hop_accuracy",
    )
    higher_is_better = {k: True for k in keys} | {"edit_nll": False}
    requires_edits = True
    Config = EditMetricsConfig

    def compute(self, lm: LM, ctx: Context) -> dict[str, Any]:
        import torch

        records = ctx.edits
        if not records:
            return {}
        with torch.inference_mode(), ctx.progress.task("edit metrics", 4) as advance:
            sc = Scorer(lm, self.config.batch_size)
            scores: dict[str, list[float | None]] = {}
            scores.update(self._prompt_group("edit_success", sc, records, lambda r: [r.prompt]))
            scores["edit_nll"] = scores.pop("edit_success_nll")
            advance(1)
            gen = self._prompt_group("generalization", sc, records, lambda r: r.rephrases)
            gen.pop("generalization_nll", None)
            scores.update(gen)
            advance(1)
            scores.update(self._locality(sc, records, ctx))
            advance(1)
            scores["multi_hop_accuracy"] = self._multi_hop(sc, records)
            advance(1)
        res: dict[str, Any] = {k: _record_mean(v) for k, v in scores.items()}
        chosen = {
            "edit_success": f"edit_success_{self.config.scorer}",
            "generalization": f"generalization_{self.config.scorer}",
            "locality": "locality_drift"
            if self.config.locality_scorer == "drift"
            else f"locality_{self.config.locality_scorer}",
        }
        for criterion, key in chosen.items():
            res[criterion] = res.get(key)
        res["edit_scorer"] = self.config.scorer
        res["locality_scorer"] = self.config.locality_scorer
        # each value above is the mean of its per-record scores (over the records that have one)
        res[PER_EDIT_KEY] = {**{c: scores[k] for c, k in chosen.items()}, **scores}
        return res

    def _prompt_group(
        self, key: str, sc: Scorer, records: list[EditRecord], prompts_of
    ) -> dict[str, list[float | None]]:
        """Per record (mean over its prompts, None without prompts): f1, accuracy, prob, nll."""
        owners, pairs_new, pairs_true = [], [], []
        for i, r in enumerate(records):
            for p in prompts_of(r):
                owners.append(i)
                pairs_new.append((p, r.target_new))
                pairs_true.append((p, r.target_true) if r.target_true else None)
        n = len(records)
        if not pairs_new:
            return {f"{key}_{s}": [None] * n for s in (*SCORERS, "nll")}
        tf_new = sc.teacher_forced(pairs_new)
        gens = sc.generate_for(pairs_new, tf_new)
        f1 = [sc.f1(g, sc.encode(p, t)[1]) for g, (p, t) in zip(gens, pairs_new, strict=True)]
        true_idx = [j for j, pt in enumerate(pairs_true) if pt is not None]
        tf_true = dict(zip(true_idx, sc.teacher_forced([pairs_true[j] for j in true_idx]), strict=True))
        prob = []
        for j, tn in enumerate(tf_new):
            if j in tf_true:
                prob.append(1.0 if tn["nll"] < tf_true[j]["nll"] else 0.0)
            else:  # no true target to contrast: geometric-mean token probability of the new one
                prob.append(math.exp(-tn["nll"]))
        return {
            f"{key}_f1": _per_record(f1, owners, n),
            f"{key}_accuracy": _per_record([t["accuracy"] for t in tf_new], owners, n),
            f"{key}_prob": _per_record(prob, owners, n),
            f"{key}_nll": _per_record([t["nll"] for t in tf_new], owners, n),
        }

    def reference(self, lm: LM, ctx: Context) -> None:
        """The base model's next-token argmaxes on the locality prompts (``locality_drift``
        compares every later model with them); the same teacher-forced pass ``compute`` makes."""
        import torch

        _owners, pairs = _locality_pairs(ctx.edits)
        key = _reference_key(ctx.edits)
        if not pairs or key in ctx.state:
            return
        with torch.inference_mode():
            tf = Scorer(lm, self.config.batch_size).teacher_forced(pairs)
        ctx.state[key] = [t["argmax"] for t in tf]

    def _locality(self, sc: Scorer, records: list[EditRecord], ctx: Context) -> dict[str, list[float | None]]:
        """Per record (mean over its locality prompts, None without any): f1, accuracy, prob, drift."""
        owners, pairs = _locality_pairs(records)
        n = len(records)
        if not pairs:
            return {k: [None] * n for k in ("locality_f1", "locality_accuracy", "locality_prob", "locality_drift")}
        tf = sc.teacher_forced(pairs)
        gens = sc.generate_for(pairs, tf)
        f1 = [sc.f1(g, sc.encode(p, a)[1]) for g, (p, a) in zip(gens, pairs, strict=True)]
        # prob: the locality answer still beats the edit's new target (ROME's neighborhood score);
        # prompts whose answer is the new target give no contrast and are skipped.
        contrast = [
            (j, (p, records[owners[j]].target_new))
            for j, (p, a) in enumerate(pairs)
            if a.strip() != records[owners[j]].target_new.strip()
        ]
        tf_new = sc.teacher_forced([pn for _, pn in contrast])
        prob = [1.0 if tf[j]["nll"] < t["nll"] else 0.0 for (j, _), t in zip(contrast, tf_new, strict=True)]
        # drift: next-token argmaxes versus the first model evaluated in this run (the base)
        argmaxes = [t["argmax"] for t in tf]
        ref = ctx.state.setdefault(_reference_key(records), argmaxes)
        same = [sum(a == b for a, b in zip(x, y, strict=True)) / len(x) for x, y in zip(argmaxes, ref, strict=True)]
        return {
            "locality_f1": _per_record(f1, owners, n),
            "locality_accuracy": _per_record([t["accuracy"] for t in tf], owners, n),
            "locality_prob": _per_record(prob, [owners[j] for j, _ in contrast], n),
            "locality_drift": _per_record(same, owners, n),
        }

    def _multi_hop(self, sc: Scorer, records: list[EditRecord]) -> list[float | None]:
        """Per record: 1.0 if any of its multi-hop questions is answered with the new answer,
        else 0.0; None for a record without multi-hop questions."""
        out: list[float | None] = []
        for r in records:
            mh = r.multi_hop
            if mh is None:
                out.append(None)
                continue
            answers = [a.lower() for a in [mh.new_answer, *mh.new_answer_aliases] if a]
            gens = sc.generate([multi_hop_prompt(q) for q in mh.questions], [MULTI_HOP_TOKENS] * len(mh.questions))
            texts = [sc.tok.decode(g, skip_special_tokens=True).strip().lower() for g in gens]
            out.append(
                1.0 if any(any(t.startswith(a) or a in t.split("\n")[0] for a in answers) for t in texts) else 0.0
            )
        return out
