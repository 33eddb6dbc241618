"""Edit success, generalization, locality (preservation of the neighbours' answers), what the
model knows of the neighbours, edit NLL and the NLL of unedited facts.

All definitions are in docs/metrics.md. Targets are tokenized on their own with a leading
space (unless the prompt ends in whitespace) and appended to the prompt's tokens, as in
ROME/MEMIT, so the boundary never merges into one token.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, Union, cast

from lmcompose.api import PER_EDIT_KEY, Context, EditRecord, Metric

if TYPE_CHECKING:
    import torch
    from torch import Tensor
    from transformers import (
        DynamicCache,
        GenerationConfig,
        GenerationMixin,
        PretrainedConfig,
        PreTrainedModel,
        PreTrainedTokenizerBase,
    )

    from lmcompose.metrics._multi_hop import MultiHopProtocol
    from lmcompose.models.handle import LM

__all__ = ["EditMetrics", "EditMetricsConfig", "Scorer", "multi_hop_prompt", "target_text"]

SCORERS = ("f1", "accuracy", "prob")
MULTI_HOP_TOKENS = 8
#: locality scorer -> the row key it reads
LOCALITY_KEYS = {
    "preservation": "locality_preservation",
    "prob": "locality_prob",
    "neighbour_knowledge": "neighbour_knowledge",
    "neighbour_knowledge_accuracy": "neighbour_knowledge_accuracy",
}
#: ``drift`` is preservation's earlier name (it now reads the answer positions only, as
#: EasyEdit's locality does); the scorers that scored the neighbours' ground-truth answers
#: were renamed for what they measure (lmcompose 0.4)
LOCALITY_ALIASES = {"drift": "preservation"}
RENAMED_LOCALITY_SCORERS = {"f1": "neighbour_knowledge", "accuracy": "neighbour_knowledge_accuracy"}
#: what the base-model reference of locality preservation holds (kept in Context.references)
REFERENCE_KIND = "locality_answer_argmax"

_T = TypeVar("_T")


class _ForcedScore(TypedDict):
    nll: float
    accuracy: float
    target_argmax: list[int]


class ForcedScore(_ForcedScore, total=False):
    """What :meth:`Scorer.teacher_forced` gives for one (prompt, target): the target's mean
    token NLL, token accuracy, the argmax at each position that predicts a target token, and
    (where asked for) the argmax at every predicted position of prompt + target."""

    argmax: list[int]


#: an attention mask the decoder takes: 2D padding, a prepared 4D mask, or one per layer kind
AttentionMask = Union["Tensor", dict[str, "Tensor"]]


@dataclass
class EditMetricsConfig:
    scorer: Literal["f1", "accuracy", "prob"] = field(
        default="f1",
        metadata={
            "help": "scorer behind edit_success and generalization: f1 (the paper's: greedy generation, token-bag "
            "F1), accuracy (teacher-forced token accuracy), prob (P(new) > P(true))"
        },
    )
    locality_scorer: str = field(
        default="preservation",
        metadata={
            "help": "scorer behind locality: preservation (EasyEdit's: share of the neighbour prompts' "
            "answer-position argmaxes unchanged from the unedited model; drift is its earlier name), prob "
            "(ROME's neighbourhood score: the neighbour's answer beats the new target), neighbour_knowledge (the "
            "paper's code: F1 of the greedy answer against the neighbour's ground truth, what the model knows of "
            "the neighbours, not what an edit changed), neighbour_knowledge_accuracy (its teacher-forced token "
            "accuracy)"
        },
    )
    neighbour_knowledge: bool = field(
        default=False,
        metadata={
            "help": "also score neighbour_knowledge (F1 of the greedy answer to each locality prompt against the "
            "neighbour's ground truth), which needs greedy generation on every locality prompt, the longest "
            "continuations of a zsRE evaluation; off (the default) it is null and no other score changes; "
            "locality_scorer neighbour_knowledge (protocol paper) turns it on"
        },
    )
    batch_size: int = field(
        default=16, metadata={"help": "prompts per forward pass / generate call", "range": (1, 4096)}
    )
    multi_hop: Literal["mquake", "mquake_cot", "zero_shot"] = field(
        default="mquake",
        metadata={
            "help": "how multi_hop_accuracy asks MQuAKE's questions: mquake (MQuAKE's few-shot prompts from the "
            "data folder's mquake/prompts/, exact match), mquake_cot (its chain-of-thought prompts), zero_shot "
            "(lmcompose 0.3's 'Q: A:' prompt and lenient match; not comparable with MQuAKE's numbers)"
        },
    )

    def __post_init__(self) -> None:
        scorer = LOCALITY_ALIASES.get(self.locality_scorer, self.locality_scorer)
        if scorer in RENAMED_LOCALITY_SCORERS:
            raise ValueError(
                f"locality_scorer {scorer!r} scored the neighbours' ground-truth answers, which measures what the "
                f"model knows of them, not what an edit left unchanged; since lmcompose 0.4 it is "
                f"{RENAMED_LOCALITY_SCORERS[scorer]!r}. Use that name, or 'preservation' (the default) for locality"
            )
        if scorer not in LOCALITY_KEYS:
            raise ValueError(
                f"locality_scorer {self.locality_scorer!r} is not one of {', '.join(LOCALITY_KEYS)} (or drift, "
                "preservation's earlier name)"
            )
        self.locality_scorer = scorer
        if scorer == "neighbour_knowledge":
            self.neighbour_knowledge = True  # the headline locality is this score: it must be scored


def target_text(prompt: str, target: str) -> str:
    """The target as it is tokenized after ``prompt``: stripped, with a leading space unless
    the prompt ends in whitespace (editors and metrics must agree on this)."""
    target = target.strip()
    return target if (not prompt or prompt[-1].isspace()) else " " + target


class Scorer:
    """Batched teacher forcing and greedy generation on one LM.

    Teacher forcing packs each distinct prompt and every target scored after it into one row:
    the prompt, then each target's tokens but its last, under a block mask in which every
    target sees the whole prompt and its own earlier tokens only, position ids continuing the
    prompt's for each target; one decoder forward per batch of rows, the LM head only at the
    positions a score reads. Where a custom 4D mask cannot stand for the model's attention
    (flash attention, layer kinds other than full and sliding-window: :func:`_packed_layout`),
    or with ``packed=False``, each distinct prompt runs once and every target branches from
    its cached keys and values in a second forward (``_branched``). ``per_pair=True``: the
    earlier path, every pair a sequence of its own with the head at every position, and
    generation through ``model.generate``, kept to check the others against.

    Greedy generation is a loop of our own over the decoder and a key-value cache (rows
    sorted by length, left-padded, a row leaving the batch when it is done; the head at the
    last position only); a model whose generation config asks ``generate`` for more than
    greedy decoding (a repetition penalty, beams, suppressed tokens: :func:`_plain_greedy`)
    is generated on by ``model.generate``."""

    def __init__(self, lm: LM, batch_size: int, per_pair: bool = False, packed: bool = True):
        import torch

        self.torch = torch
        self.lm = lm
        self.tok = lm.tokenizer
        self.batch_size = batch_size
        self.per_pair = per_pair
        self.packed = packed
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.special = set(self.tok.all_special_ids)
        self._excluded: dict[int, bool] = {}
        self._prompt_ids: dict[str, list[int]] = {}
        self._head: _HeadAbove | None = None
        # per (prompt ids, target ids) that greedy generation goes on from: the keys and values
        # (per layer, heads x tokens x dim) of the prompt and of the target tokens before the
        # first one teacher forcing's argmax misses (``teacher_forced(continued=...)``)
        self._prefixes: dict[tuple[tuple[int, ...], tuple[int, ...]], list[tuple[Tensor, Tensor]]] = {}

    def encode(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        if prompt not in self._prompt_ids:
            self._prompt_ids[prompt] = self.tok(prompt, add_special_tokens=True).input_ids
        t = self.tok(target_text(prompt, target), add_special_tokens=False).input_ids
        return list(self._prompt_ids[prompt]), t

    def teacher_forced(
        self,
        pairs: list[tuple[str, str]],
        full_argmax: bool | list[bool] = True,
        continued: list[bool] | None = None,
    ) -> list[ForcedScore]:
        """For each (prompt, target): mean token NLL of the target (``nll``), token accuracy
        (``accuracy``), the argmax at each position that predicts a target token
        (``target_argmax``) and, where ``full_argmax`` asks (one flag, or one per pair), the
        argmax at every predicted position of prompt+target (``argmax``).

        Rows (packed or branched) are batched shortest first (results in the order given):
        CounterFact's prompts vary in length, and batching them as they come pads a third of
        the tokens.

        ``continued`` (one flag per pair): pairs that :meth:`generate_for` will go on from. On
        the packed path their keys and values are kept up to where the argmax first leaves the
        target, so greedy generation continues from them instead of running the prompt again."""
        wants = [full_argmax] * len(pairs) if isinstance(full_argmax, bool) else list(full_argmax)
        encoded = [self.encode(p, t) for p, t in pairs]
        if not encoded:
            return []
        empty = next((prompt for (prompt, _t), (p, _ids) in zip(pairs, encoded, strict=True) if not p), None)
        if empty is not None:
            raise ValueError(
                f"prompt {empty!r} has no tokens (and the tokenizer adds no BOS token), so no position predicts "
                "its target's first token; give every edit and locality record a prompt"
            )
        if self.per_pair:
            return self._teacher_forced_per_pair(encoded, wants)
        layout = _packed_layout(self._head_above().decoder.config) if self.packed else None
        with self.torch.no_grad():
            if layout is not None:
                keeps = list(continued) if continued is not None else [False] * len(encoded)
                return self._teacher_forced_packed(encoded, wants, layout, keeps)
            by_prompt: dict[tuple[int, ...], list[int]] = {}
            for j, (p, _t) in enumerate(encoded):
                by_prompt.setdefault(tuple(p), []).append(j)
            prompts = sorted(by_prompt, key=len)
            scored: dict[int, ForcedScore] = {}
            for start in range(0, len(prompts), self.batch_size):
                chunk = prompts[start : start + self.batch_size]
                self._branched(chunk, [by_prompt[p] for p in chunk], encoded, wants, scored)
        return [scored[j] for j in range(len(encoded))]

    def _head_above(self) -> _HeadAbove:
        if self._head is None:
            self._head = _HeadAbove(self.lm)
        return self._head

    def _teacher_forced_packed(
        self,
        encoded: list[tuple[list[int], list[int]]],
        wants: list[bool],
        layout: tuple[frozenset[str], int | None],
        keeps: list[bool],
    ) -> list[ForcedScore]:
        """Each distinct prompt and its distinct targets packed into rows (:func:`_pack_rows`),
        rows sorted by length and batched by a token budget: a forward holds at most
        ``batch_size`` times the longest (prompt + target) of the call, padding included,
        which is the most the per-pair path's widest batch holds. A budget rather than a count
        of rows: rows of few tokens (CounterFact's, a prompt and one-token targets) then fill
        wide forwards, which cost less per token, and a row of many targets never makes a
        batch ``batch_size`` times its length."""
        longest = max(len(p) + max(len(t) - 1, 0) for p, t in encoded)
        budget = self.batch_size * longest
        rows = sorted(_pack_rows(encoded, min(_ROW_PAIRS, self.batch_size) * longest), key=lambda r: r.length)
        scored: dict[int, ForcedScore] = {}
        for batch in budget_batches(rows, budget, lambda batch: batch[-1].length):  # sorted: the last is widest
            self._score_packed(batch, wants, layout, scored, keeps)
        return [scored[j] for j in range(len(encoded))]

    def _score_packed(
        self,
        rows: list[_Row],
        wants: list[bool],
        layout: tuple[frozenset[str], int | None],
        scored: dict[int, ForcedScore],
        keeps: list[bool],
    ) -> None:
        """One decoder forward over ``rows`` (right-padded), the LM head at each prompt's last
        position (it predicts every target's first token), at every target position (each
        predicts the target's next token), and at a prompt's other positions only where a
        pair of the row asks for every argmax; each pair scored into ``scored``; the keys and
        values of the pairs ``keeps`` flags kept for generation (:meth:`_keep_prefix`)."""
        torch = self.torch
        head = self._head_above()
        width = max(r.length for r in rows)
        ids = [[self.pad] * width for _ in rows]
        pos = [[0] * width for _ in rows]
        seg = [[-1] * width for _ in rows]  # 0: the prompt, k: the row's k-th target, -1: padding
        cols: list[tuple[int, int]] = []  # (row, column) of each position the head runs at
        reads: list[int] = []  # for each target token, the index in ``cols`` that predicts it
        tokens: list[int] = []
        scoring: list[tuple[int, list[int]]] = []  # per target: its length, the pairs it scores
        prompts: list[tuple[int, int]] = []  # per target: its prompt's first and last position in cols
        segments: list[tuple[int, int, list[int], bool]] = []  # per target: row, first column, tokens, kept
        for i, row in enumerate(rows):
            n = len(row.prompt)
            ids[i][:n], pos[i][:n], seg[i][:n] = row.prompt, range(n), [0] * n
            full = any(wants[j] for _t, js in row.targets for j in js)
            first = len(cols) + (0 if full else n - 1)
            cols += [(i, c) for c in range(0 if full else n - 1, n)]
            last = len(cols) - 1
            at = n
            for k, (t, js) in enumerate(row.targets, 1):
                cont = t[:-1]
                ids[i][at : at + len(cont)] = cont
                pos[i][at : at + len(cont)] = range(n, n + len(cont))
                seg[i][at : at + len(cont)] = [k] * len(cont)
                if t:
                    reads += [last, *range(len(cols), len(cols) + len(cont))]
                    tokens += t
                cols += [(i, c) for c in range(at, at + len(cont))]
                at += len(cont)
                scoring.append((len(t), js))
                prompts.append((first, last))
                segments.append((i, at - len(cont), t, any(keeps[j] for j in js)))
        dev = self.lm.device
        positions = torch.tensor(pos)
        mask = _packed_mask(torch.tensor(seg, device=dev), positions.to(dev), layout, head.dtype)
        cache = head.new_cache() if any(kept for *_x, kept in segments) else None
        h = head.hidden(torch.tensor(ids), mask, positions, cache)
        where = torch.tensor(cols, device=h.device)
        logits = head.logits(h[where[:, 0], where[:, 1]])
        argmax = logits.argmax(-1)
        read = torch.tensor(reads, dtype=torch.long, device=logits.device)
        target = torch.tensor(tokens, dtype=torch.long, device=logits.device)
        token_logp = logits[read, target] - torch.logsumexp(logits[read], -1)
        hits = argmax[read] == target
        # per target: the NLL summed in float64, the accuracy as a float32 mean (as before)
        lengths = torch.tensor([length for length, _js in scoring], device=logits.device)
        owner = torch.repeat_interleave(torch.arange(len(scoring), device=logits.device), lengths)
        zeros = torch.zeros(len(scoring), dtype=torch.float64, device=logits.device)
        nll = (-zeros.index_add(0, owner, token_logp.double()) / lengths).tolist()
        accuracy = (zeros.float().index_add(0, owner, hits.float()) / lengths.float()).tolist()
        read_argmax, every_argmax = argmax[read].tolist(), argmax.tolist()
        at = 0
        for k, ((length, js), (first, last)) in enumerate(zip(scoring, prompts, strict=True)):
            got = read_argmax[at : at + length]
            at += length
            if cache is not None and segments[k][3]:
                row_i, start, t, _kept = segments[k]
                self._keep_prefix(cache, width, row_i, rows[row_i].prompt, start, t, got)
            for j in js:
                out: ForcedScore = {"nll": nll[k], "accuracy": accuracy[k], "target_argmax": list(got)}
                if wants[j]:
                    out["argmax"] = every_argmax[first:last] + got
                scored[j] = out

    def _keep_prefix(
        self,
        cache: DynamicCache,
        width: int,
        row: int,
        prompt: list[int],
        start: int,
        target: list[int],
        got: list[int],
    ) -> None:
        """Keep, for :meth:`generate_for`, the keys and values of ``prompt`` (columns 0 to its
        length of ``row``) and of the target tokens (from column ``start``) before the first
        that ``got`` (the teacher-forced argmaxes) misses, where that is before the target's
        last token (else nothing is generated). Nothing is kept where a sliding-window layer
        has already dropped columns of the row, or a layer keeps no keys and values."""
        miss = first_miss(got, target)
        if miss >= len(target) - 1:
            return
        from transformers.cache_utils import CacheLayerMixin

        layers: list[tuple[Tensor, Tensor]] = []
        for layer in cache.layers:
            keys = layer.keys if isinstance(layer, CacheLayerMixin) else None
            values = layer.values if isinstance(layer, CacheLayerMixin) else None
            if keys is None or values is None or keys.shape[-2] != width:
                return  # a layer that keeps no keys and values, or a sliding window that dropped columns
            layers.append((keys, values))
        torch = self.torch
        idx = torch.cat([torch.arange(len(prompt)), torch.arange(start, start + miss)]).to(layers[0][0].device)
        self._prefixes[(tuple(prompt), tuple(target))] = [(k[row][:, idx], v[row][:, idx]) for k, v in layers]

    def _branched(
        self,
        prompts: list[tuple[int, ...]],
        members: list[list[int]],
        encoded: list[tuple[list[int], list[int]]],
        wants: list[bool],
        scored: dict[int, ForcedScore],
    ) -> None:
        """Score the pairs ``members[i]`` of each prompt ``prompts[i]`` into ``scored``: the
        prompts run once (left-padded, so a sliding window sees no padding between a prompt and
        its target), then every pair's target but its last token after its prompt's keys and
        values, position ids continuing the prompt's."""
        torch = self.torch
        head, dev = self._head_above(), self.lm.device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        pairs = [(i, j) for i, js in enumerate(members) for j in js]
        branch = max(len(encoded[j][1]) for _i, j in pairs) - 1
        cache = head.new_cache() if branch > 0 else None
        h = head.hidden(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache)
        # the prompt's last position predicts every target's first token; the prompt's own
        # positions only where a pair asks for every argmax (locality drift)
        full = [any(wants[j] for j in js) for js in members]
        rows: list[int] = []
        cols: list[int] = []
        for i, p in enumerate(prompts):
            first = width - len(p) if full[i] else width - 1
            rows += [i] * (width - first)
            cols += range(first, width)
        logits = head.logits(h[torch.tensor(rows, device=h.device), torch.tensor(cols, device=h.device)])
        argmax = logits.argmax(-1).tolist()
        last: list[Tensor] = []
        prompt_argmax: list[list[int]] = []
        at = 0
        for i, p in enumerate(prompts):
            n = len(p) if full[i] else 1
            last.append(logits[at + n - 1])
            prompt_argmax.append(argmax[at : at + n - 1])
            at += n
        after: tuple[Tensor, ...] = ()
        if branch > 0:
            sel = torch.tensor([i for i, _j in pairs])
            assert cache is not None  # made above when branch > 0
            cache.batch_select_indices(sel.to(dev))
            cont = torch.full((len(pairs), branch), self.pad, dtype=torch.long)
            cont_mask = torch.zeros((len(pairs), branch), dtype=torch.long)
            for r, (_i, j) in enumerate(pairs):
                t = encoded[j][1][:-1]
                cont[r, : len(t)] = torch.tensor(t, dtype=torch.long)
                cont_mask[r, : len(t)] = 1
            positions = torch.tensor([len(prompts[i]) for i, _j in pairs])[:, None] + torch.arange(branch)
            h = head.hidden(cont, torch.cat([mask[sel], cont_mask], 1), positions, cache)
            lengths = cont_mask.sum(-1).tolist()
            # boolean indexing keeps row-major order: each pair's positions in turn
            after = head.logits(h[cont_mask.bool().to(h.device)]).split(lengths)
        for r, (i, j) in enumerate(pairs):
            t = encoded[j][1]
            at_target = torch.cat([last[i][None], after[r]]) if after else last[i][None]
            tgt = torch.tensor(t, device=at_target.device)
            token_logp = at_target.gather(-1, tgt[:, None])[:, 0] - torch.logsumexp(at_target, -1)
            target_argmax = at_target.argmax(-1)
            out: ForcedScore = {
                "nll": float(-token_logp.mean()),
                "accuracy": float((target_argmax == tgt).float().mean()),
                "target_argmax": target_argmax.tolist(),
            }
            if wants[j]:
                out["argmax"] = prompt_argmax[i] + out["target_argmax"]
            scored[j] = out

    def _teacher_forced_per_pair(
        self, encoded: list[tuple[list[int], list[int]]], wants: list[bool]
    ) -> list[ForcedScore]:
        """The earlier path: every (prompt, target) its own right-padded sequence, the LM head
        and log-softmax over every position."""
        torch = self.torch
        order = sorted(range(len(encoded)), key=lambda j: len(encoded[j][0]) + len(encoded[j][1]))
        scored: dict[int, ForcedScore] = {}
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
                    "target_argmax": argmax[len(p) - 1 :].tolist(),
                }
                if wants[j]:
                    scored[j]["argmax"] = argmax.tolist()
        return [scored[j] for j in range(len(encoded))]

    def generate(self, prompts: list[str], lengths: list[int]) -> list[list[int]]:
        """Greedy continuation of each prompt, ``lengths[i]`` new tokens (batched, left-padded)."""
        return self.generate_ids([self.tok(p, add_special_tokens=True).input_ids for p in prompts], lengths)

    def generate_ids(self, prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
        """Greedy continuation of each token-id prompt, ``lengths[i]`` new tokens, or fewer where
        an end-of-sequence token of the model's generation config comes first (it ends the
        list; ``model.generate`` would pad after it, padding every score leaves out).

        The greedy loop (:meth:`_greedy`); ``per_pair=True``, or a generation config that asks
        for more than greedy decoding (:func:`_plain_greedy`): ``model.generate``."""
        with self.torch.no_grad():
            if self.per_pair or not _plain_greedy(self.lm.model.generation_config):
                return self._generate_ids_whole(prompts, lengths)
            return self._greedy(prompts, lengths)

    def _generation_eos(self) -> set[int]:
        """The tokens ``model.generate`` stops a row at: its generation config's end of sequence."""
        ids = getattr(self.lm.model.generation_config, "eos_token_id", None)
        return {int(i) for i in (ids if isinstance(ids, list | tuple) else [] if ids is None else [ids])}

    def _greedy(self, prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
        """The greedy loop: prompts sorted by length, ``batch_size`` a batch, left-padded (a
        sliding window then sees no padding between a row's tokens), position ids from each
        row's first token; each step runs the last token of the rows still going after the
        cached keys and values, the LM head at that position only, and a row that has its
        tokens or an end-of-sequence token leaves the batch (its cache rows with it)."""
        torch, head = self.torch, self._head_above()
        outs: list[list[int]] = [[] for _ in prompts]
        order = sorted((j for j in range(len(prompts)) if lengths[j] > 0), key=lambda j: len(prompts[j]))
        for start in range(0, len(order), self.batch_size):
            live = order[start : start + self.batch_size]
            width = max(len(prompts[j]) for j in live)
            ids = torch.full((len(live), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(live), width), dtype=torch.long)
            for i, j in enumerate(live):
                ids[i, width - len(prompts[j]) :] = torch.tensor(prompts[j], dtype=torch.long)
                mask[i, width - len(prompts[j]) :] = 1
            cache = head.new_cache()
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            h = head.hidden(ids, mask, positions, cache)
            nxt = head.logits(h[:, -1]).argmax(-1).cpu()
            self._decode(live, nxt, mask, positions[:, -1:], cache, self._until_lengths(outs, lengths))
        return outs

    def _decode(
        self,
        live: list[int],
        nxt: Tensor,
        mask: Tensor,
        last: Tensor,
        cache: DynamicCache,
        goes_on: Callable[[int, int], bool],
    ) -> None:
        """The greedy loop's steps: each live row ``j`` is given its next token ``t`` (``nxt``)
        by ``goes_on(j, t)``, which keeps it and says whether the row goes on; the rows that do
        run it after ``cache`` (``mask`` covers the cached tokens, ``last`` holds each row's
        position of its last one) for the token after, the others leave the batch (their
        cache rows with them), until no row goes on."""
        torch, head, dev = self.torch, self._head_above(), self.lm.device
        while True:
            keep = [at for at, j in enumerate(live) if goes_on(j, int(nxt[at]))]  # places in ``live``
            if not keep:
                return
            if len(keep) < len(live):
                sel = torch.tensor(keep)
                cache.batch_select_indices(sel.to(dev))
                mask, last, nxt = mask[sel], last[sel], nxt[sel]
                live = [live[at] for at in keep]
            mask = torch.cat([mask, torch.ones((len(live), 1), dtype=torch.long)], 1)
            last = last + 1
            h = head.hidden(nxt[:, None], mask, last, cache)
            nxt = head.logits(h[:, -1]).argmax(-1).cpu()

    def _until_lengths(self, outs: list[list[int]], lengths: list[int]) -> Callable[[int, int], bool]:
        """:meth:`_decode`'s rule for ``lengths[j]`` new tokens a row, or fewer where an
        end-of-sequence token of the generation config comes first (it ends the list)."""
        stop = self._generation_eos()

        def goes_on(j: int, t: int) -> bool:
            outs[j].append(t)
            return t not in stop and len(outs[j]) < lengths[j]

        return goes_on

    def _greedy_after(
        self, prefixes: list[list[tuple[Tensor, Tensor]]], first: list[int], lengths: list[int]
    ) -> list[list[int]]:
        """Greedy continuation, ``lengths[i]`` new tokens, of sequences whose keys and values
        teacher forcing kept (``prefixes[i]``, per layer) and whose next token is ``first[i]``:
        rows sorted by length, their keys and values left-padded into one cache, ``first``
        run after them, then the greedy loop (:meth:`_decode`). A decode step passes one token
        a row and reads every weight once, so on a CPU its time is mostly the weights' and a
        step's rows come nearly free: a batch takes as many rows as one teacher-forced forward
        of the call passes tokens (``batch_size`` times the longest kept + new tokens), which
        for an evaluation's few hundred continuations is one batch, and the steps are the
        longest continuation's (a row leaves when it has its tokens). The padded cache this
        builds is the size of the keys and values teacher forcing already kept."""
        torch, head = self.torch, self._head_above()
        outs: list[list[int]] = [[] for _ in prefixes]
        size = [p[0][0].shape[-2] for p in prefixes]
        order = sorted((j for j in range(len(prefixes)) if lengths[j] > 0), key=lambda j: size[j])
        if not order:
            return outs
        rows = self.batch_size * max(size[j] + lengths[j] for j in order)  # the tokens a forward passes
        for live in (order[start : start + rows] for start in range(0, len(order), rows)):
            width = max(size[j] for j in live)
            cache = head.new_cache()
            for layer in range(len(prefixes[live[0]])):
                keys, values = [], []
                for j in live:
                    k, v = prefixes[j][layer]
                    keys.append(torch.nn.functional.pad(k, (0, 0, width - size[j], 0)))
                    values.append(torch.nn.functional.pad(v, (0, 0, width - size[j], 0)))
                cache.update(torch.stack(keys), torch.stack(values), layer)
            mask = torch.zeros((len(live), width + 1), dtype=torch.long)
            for i, j in enumerate(live):
                mask[i, width - size[j] :] = 1
            last = torch.tensor([size[j] for j in live])[:, None]
            h = head.hidden(torch.tensor([first[j] for j in live])[:, None], mask, last, cache)
            nxt = head.logits(h[:, -1]).argmax(-1).cpu()
            self._decode(live, nxt, mask, last, cache, self._until_lengths(outs, lengths))
        return outs

    def _generate_ids_whole(self, prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
        """``generate_ids`` through ``model.generate`` (batches in the order given, left-padded)."""
        torch = self.torch
        stop = self._generation_eos()
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
            gen = (
                _generating(self.lm.model)
                .generate(
                    input_ids=ids.to(self.lm.device),
                    attention_mask=mask.to(self.lm.device),
                    max_new_tokens=max(want),
                    do_sample=False,
                    pad_token_id=self.pad,
                )[:, width:]
                .cpu()
            )
            for i, n in enumerate(want):
                row = gen[i, :n].tolist()
                ends = [k for k, t in enumerate(row) if t in stop]
                outs.append(row[: ends[0] + 1] if ends else row)
        return outs

    def generate_until(self, prompts: list[str], max_new_tokens: int, finished: Callable[[str], bool]) -> list[str]:
        """Greedy continuation of each prompt as text (special tokens skipped), up to where
        ``finished(text)`` first holds, an end-of-sequence token, or ``max_new_tokens``.

        Prompts that share a beginning (a few-shot prompt's demonstrations) run it once: its
        keys and values are computed for one row and copied to every row of a batch, and only
        the rest of each prompt runs after them, left-padded (similar lengths together), position
        ids continuing the shared part's; a row that has finished leaves the batch (its cache
        rows with it), so later steps attend over the rows still going only.
        ``per_pair=True`` (or no shared beginning): every prompt whole, through
        ``model.generate``."""
        encoded = [self.tok(p, add_special_tokens=True).input_ids for p in prompts]
        if not encoded:
            return []
        shared = _shared_length(encoded)
        with self.torch.no_grad():
            if self.per_pair or shared == 0:
                return self._generate_until_whole(encoded, max_new_tokens, finished)
            return self._generate_until_shared(encoded, shared, max_new_tokens, finished)

    def _stop_ids(self) -> set[int]:
        """The end-of-sequence tokens generation stops at (the model's and the tokenizer's)."""
        ids = getattr(self.lm.model.generation_config, "eos_token_id", None)
        ids = set(ids if isinstance(ids, list | tuple) else [] if ids is None else [ids])
        if self.tok.eos_token_id is not None:
            ids.add(self.tok.eos_token_id)
        return {int(i) for i in ids}

    def _text_until(self, tokens: list[int], finished: Callable[[str], bool]) -> str:
        """The decoded text of ``tokens`` up to the first token after which ``finished`` holds."""
        for n in range(1, len(tokens) + 1):
            text = _decode(self.tok, tokens[:n], skip_special_tokens=True)
            if finished(text):
                return text
        return _decode(self.tok, tokens, skip_special_tokens=True)

    def _generate_until_whole(
        self, encoded: list[list[int]], max_new_tokens: int, finished: Callable[[str], bool]
    ) -> list[str]:
        torch = self.torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok = self.tok
        order = sorted(range(len(encoded)), key=lambda j: len(encoded[j]))
        texts: dict[int, str] = {}

        class _Until(StoppingCriteria):
            def __init__(self, width: int):
                self.width = width

            def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: object) -> Tensor:
                done = [finished(t) for t in tok.batch_decode(input_ids[:, self.width :], skip_special_tokens=True)]
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        stop = self._stop_ids()
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = max(len(encoded[j]) for j in chunk)
            ids = torch.full((len(chunk), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, j in enumerate(chunk):
                ids[i, width - len(encoded[j]) :] = torch.tensor(encoded[j])
                mask[i, width - len(encoded[j]) :] = 1
            gen = (
                _generating(self.lm.model)
                .generate(
                    input_ids=ids.to(self.lm.device),
                    attention_mask=mask.to(self.lm.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.pad,
                    stopping_criteria=StoppingCriteriaList([_Until(width)]),
                )[:, width:]
                .cpu()
            )
            for i, j in enumerate(chunk):
                row = gen[i].tolist()
                ends = [k for k, t in enumerate(row) if t in stop]
                texts[j] = self._text_until(row[: ends[0]] if ends else row, finished)
        return [texts[j] for j in range(len(encoded))]

    def _generate_until_shared(
        self, encoded: list[list[int]], shared: int, max_new_tokens: int, finished: Callable[[str], bool]
    ) -> list[str]:
        import copy

        if max_new_tokens < 1:
            return [""] * len(encoded)
        torch = self.torch
        head = self._head_above()
        prefix = torch.tensor([encoded[0][:shared]], dtype=torch.long)
        common = head.new_cache()
        head.hidden(prefix, torch.ones_like(prefix), torch.arange(shared)[None], common)
        stop = self._stop_ids()
        order = sorted(range(len(encoded)), key=lambda j: len(encoded[j]))
        texts: dict[int, str] = {}
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            n = len(chunk)
            cache = copy.deepcopy(common)
            cache.batch_select_indices(torch.zeros(n, dtype=torch.long, device=self.lm.device))
            rests = [encoded[j][shared:] for j in chunk]
            width = max(len(r) for r in rests)
            ids = torch.full((n, width), self.pad, dtype=torch.long)
            own = torch.zeros((n, width), dtype=torch.long)
            for i, r in enumerate(rests):
                ids[i, width - len(r) :] = torch.tensor(r)
                own[i, width - len(r) :] = 1
            mask = torch.cat([torch.ones((n, shared), dtype=torch.long), own], 1)
            positions = shared + (own.cumsum(-1) - 1).clamp(min=0)
            h = head.hidden(ids, mask, positions, cache)
            nxt = head.logits(h[:, -1]).argmax(-1).cpu()
            out: list[list[int]] = [[] for _ in chunk]

            def goes_on(i: int, t: int, out: list[list[int]] = out) -> bool:
                if t in stop:
                    return False
                out[i].append(t)
                text = _decode(self.tok, out[i], skip_special_tokens=True)
                return len(out[i]) < max_new_tokens and not finished(text)

            self._decode(list(range(n)), nxt, mask, positions[:, -1:], cache, goes_on)
            for i, j in enumerate(chunk):
                texts[j] = _decode(self.tok, out[i], skip_special_tokens=True)
        return [texts[j] for j in range(len(encoded))]

    def generate_for(self, pairs: list[tuple[str, str]], forced: list[ForcedScore] | None = None) -> list[list[int]]:
        """Greedy continuation of each prompt, clipped to its target's token length.

        With ``forced`` (``teacher_forced(pairs)``), the argmaxes at the target's positions already
        give the greedy tokens for as long as they agree with the target, and the first token
        that disagrees: only pairs that disagree before their last token are generated on,
        from the prompt plus the tokens found so far: after the keys and values teacher forcing
        kept for the pair (``teacher_forced(continued=...)``), else from the prompt run again.
        Single-token targets need no generation."""
        encoded = [self.encode(p, t) for p, t in pairs]
        if forced is None:
            return self.generate([p for p, _ in pairs], [len(t) for _, t in encoded])
        outs: list[list[int]] = []
        rest: list[int] = []
        for j, ((_p, t), f) in enumerate(zip(encoded, forced, strict=True)):
            got = f["target_argmax"][: first_miss(f["target_argmax"], t) + 1]  # agreeing, then the first miss
            outs.append(got)
            if len(got) < len(t):
                rest.append(j)
        kept: dict[int, list[tuple[Tensor, Tensor]]] = {}
        if not self.per_pair and _plain_greedy(self.lm.model.generation_config):
            for j in rest:
                prefix = self._prefixes.get((tuple(encoded[j][0]), tuple(encoded[j][1])))
                if prefix is not None:  # the prompt and the target tokens before the one missed
                    assert prefix[0][0].shape[-2] == len(encoded[j][0]) + len(outs[j]) - 1
                    kept[j] = prefix
        again = [j for j in rest if j not in kept]
        more = self.generate_ids(
            [encoded[j][0] + outs[j] for j in again], [len(encoded[j][1]) - len(outs[j]) for j in again]
        )
        after = list(kept)
        with self.torch.no_grad():
            more += self._greedy_after(
                [kept[j] for j in after],
                [outs[j][-1] for j in after],
                [len(encoded[j][1]) - len(outs[j]) for j in after],
            )
        for j, m in zip(again + after, more, strict=True):
            outs[j] = outs[j] + m
        return outs

    def excluded(self, token: int) -> bool:
        """Tokens F1 leaves out: special ones (pad, BOS, EOS) and any that decode to nothing
        but space, such as a sentencepiece tokenizer's bare "▁" (Llama-2's 29871)."""
        if token not in self._excluded:
            self._excluded[token] = token in self.special or not _decode(self.tok, [token]).strip()
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


def _decode(tok: PreTrainedTokenizerBase, ids: list[int], skip_special_tokens: bool = False) -> str:
    """``tok.decode``: one sequence of ids decodes to one string."""
    return cast(str, tok.decode(ids, skip_special_tokens=skip_special_tokens))


def _generating(model: PreTrainedModel) -> GenerationMixin:
    """``model`` as what it is, a causal LM (transformers' PreTrainedModel declares no ``generate``)."""
    return cast("GenerationMixin", model)


def _shared_length(encoded: list[list[int]]) -> int:
    """How many leading tokens every prompt of ``encoded`` shares, leaving each at least one
    token of its own (the last prompt token's logits pick the first generated token)."""
    first = encoded[0]
    n = min(len(e) for e in encoded) - 1
    for e in encoded[1:]:
        k = 0
        while k < n and e[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


#: a packed row holds at most this many times the longest (prompt + target) of a call; a
#: prompt with more targets than that takes several rows (each with the prompt)
_ROW_PAIRS = 4
#: the layer kinds (transformers' ``layer_types`` names) a packed row's mask is built for
_PACKABLE_KINDS = frozenset({"full_attention", "sliding_attention"})


@dataclass
class _Row:
    """A packed row: a prompt's tokens and the targets scored after it (each with the pairs,
    indices into the call's pairs, that score it), ``length`` tokens in all."""

    prompt: list[int]
    targets: list[tuple[list[int], list[int]]]
    length: int


def first_miss(argmaxes: Sequence[int], target: Sequence[int]) -> int:
    """The first position where teacher forcing's ``argmaxes`` leave ``target`` (its length
    where they never do): greedy generation agrees with the target up to there."""
    return next((k for k, (a, b) in enumerate(zip(argmaxes, target, strict=True)) if a != b), len(target))


def budget_batches(items: Sequence[_T], budget: int, width: Callable[[list[_T]], int]) -> list[list[_T]]:
    """``items`` (sorted shortest first) cut into consecutive batches of at most ``budget``
    tokens: a batch's rows times ``width(batch)``, the tokens of its widest row. A batch
    takes the next item while that holds (every batch at least one item). The one rule of
    token-budget batches (also :func:`lmcompose.editing.length_groups`)."""
    batches: list[list[_T]] = []
    batch: list[_T] = []
    for item in items:
        if batch and (len(batch) + 1) * width([*batch, item]) > budget:
            batches.append(batch)
            batch = []
        batch.append(item)
    if batch:
        batches.append(batch)
    return batches


def _pack_rows(encoded: list[tuple[list[int], list[int]]], cap: float) -> list[_Row]:
    """The rows of a packed teacher-forced pass: each distinct prompt followed by each of its
    distinct targets' tokens but the last, in the order they first come, a new row (the
    prompt again) where the next target would take the row past ``cap`` tokens."""
    groups: dict[tuple[int, ...], dict[tuple[int, ...], list[int]]] = {}
    for j, (p, t) in enumerate(encoded):
        groups.setdefault(tuple(p), {}).setdefault(tuple(t), []).append(j)
    rows: list[_Row] = []
    for prompt, targets in groups.items():
        row = _Row(list(prompt), [], len(prompt))
        for target, js in targets.items():
            extra = max(len(target) - 1, 0)
            if row.targets and row.length + extra > cap:
                rows.append(row)
                row = _Row(list(prompt), [], len(prompt))
            row.targets.append((list(target), js))
            row.length += extra
        rows.append(row)
    return rows


def _packed_layout(config: PretrainedConfig) -> tuple[frozenset[str], int | None] | None:
    """The attention kinds of a decoder's layers and its sliding window, where a packed row's
    4D mask can stand for its attention: eager or sdpa attention (both take an additive 4D
    mask as it is; flash attention takes none), causal, and every layer full or sliding-window
    (``layer_types``, or all sliding where the config has a ``sliding_window`` and no layer
    types, as Mistral's). Every built-in architecture qualifies (llama, mistral, qwen2, qwen3,
    gemma3, gpt_neox, gpt2, gptj, opt); None sends teacher forcing to the two-pass branched
    path (a chunked-attention layer, a bidirectional gemma, flash attention)."""
    if getattr(config, "_attn_implementation", None) not in ("eager", "sdpa"):
        return None
    if not getattr(config, "is_causal", True) or getattr(config, "use_bidirectional_attention", False):
        return None
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    kinds = frozenset(types) if types else frozenset({"sliding_attention" if window else "full_attention"})
    if not kinds <= _PACKABLE_KINDS or ("sliding_attention" in kinds and not window):
        return None
    return kinds, window


def _packed_mask(
    seg: Tensor, pos: Tensor, layout: tuple[frozenset[str], int | None], dtype: torch.dtype
) -> AttentionMask:
    """The additive 4D attention mask (rows, 1, width, width; 0 where a query may attend, the
    dtype's minimum elsewhere) of packed rows whose tokens belong to segment ``seg`` (0 the
    prompt, k its k-th target, -1 padding) at position ``pos``: the prompt is causal, a target
    sees the whole prompt and its own earlier tokens, never another target or padding.
    Padding sees the prompt and earlier padding, so no query row is empty (its output is never
    read). Sliding-window layers see only keys fewer than the window positions back (what the
    window is on one unpacked sequence); a model with both kinds gets the mapping of layer kind
    to mask that transformers' decoders read (``attention_mask[layer_type]``)."""
    import torch

    kinds, window = layout
    idx = torch.arange(seg.shape[1], device=seg.device)
    allowed = (idx[None, :] <= idx[:, None])[None] & ((seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None]))

    def additive(ok: Tensor) -> Tensor:
        return torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill_(~ok, torch.finfo(dtype).min)[:, None]

    masks: dict[str, Tensor] = {}
    if "full_attention" in kinds:
        masks["full_attention"] = additive(allowed)
    if "sliding_attention" in kinds:
        assert window is not None  # _packed_layout gives sliding layers only with a window
        masks["sliding_attention"] = additive(allowed & (pos[:, :, None] - pos[:, None, :] < window))
    return masks if len(masks) > 1 else next(iter(masks.values()))


#: generation settings under which ``model.generate(do_sample=False)`` is more than plain
#: greedy decoding, with the values (besides None) that leave it plain
_GENERATE_SETTINGS: dict[str, tuple[object, ...]] = {
    "num_beams": (1,),
    "penalty_alpha": (0, 0.0),
    "dola_layers": (),
    "repetition_penalty": (1.0,),
    "encoder_repetition_penalty": (1.0,),
    "no_repeat_ngram_size": (0,),
    "encoder_no_repeat_ngram_size": (0,),
    "bad_words_ids": ([],),
    "suppress_tokens": ([],),
    "begin_suppress_tokens": ([],),
    "forced_bos_token_id": (),
    "forced_eos_token_id": (),
    "min_length": (0,),
    "min_new_tokens": (0,),
    "sequence_bias": ({},),
    "exponential_decay_length_penalty": (),
    "guidance_scale": (1.0,),
    "watermarking_config": (),
    "stop_strings": ([], ""),
    "remove_invalid_values": (False,),
}


def _plain_greedy(generation_config: GenerationConfig | None) -> bool:
    """Whether ``model.generate(do_sample=False)`` is plain greedy decoding under this
    generation config (else the greedy loop would not give what ``generate`` gives)."""
    return all(getattr(generation_config, name, None) in (None, *plain) for name, plain in _GENERATE_SETTINGS.items())


class _HeadAbove:
    """The decoder (embeddings, layers, final norm, OPT's project_out) and, apart, the LM head
    with gemma's final-logit softcapping: the head runs only on the hidden states given
    (as :class:`lmcompose.editing._forward.Tail` does above a layer)."""

    def __init__(self, lm: LM):
        from lmcompose.editing._forward import _cache_argument
        from lmcompose.models.arch import get_path

        self.lm = lm
        path = lm.arch.layers.rsplit(".", 1)[0]
        if not lm.arch.final_norm.startswith(path + "."):
            raise ValueError(
                f"architecture {lm.arch.name!r}: the final norm {lm.arch.final_norm!r} is not inside the decoder "
                f"{path!r}, so the decoder's output is not what the LM head reads; the edit metrics need it there"
            )
        self.decoder = cast("PreTrainedModel", get_path(lm.model, path))  # the base model (LlamaModel, ...)
        self.cache_argument = _cache_argument(self.decoder)
        self.head = lm.model.get_output_embeddings()
        self.softcap = getattr(lm.model.config, "final_logit_softcapping", None)
        self.dtype = cast("Tensor", lm.model.get_input_embeddings().weight).dtype  # what the decoder computes in

    def new_cache(self) -> DynamicCache:
        from transformers import DynamicCache

        return DynamicCache(config=self.lm.model.config)

    def hidden(self, ids: Tensor, mask: AttentionMask, positions: Tensor, cache: DynamicCache | None) -> Tensor:
        """The decoder's last hidden states for ``ids`` (rows, width) after whatever ``cache``
        holds (None: no cache), ``mask`` covering the cached tokens and ``ids`` (2D: padding;
        or a prepared 4D mask, or a mapping of layer kind to one: :func:`_packed_mask`)."""
        dev = self.lm.device
        out = self.decoder(
            input_ids=ids.to(dev),
            attention_mask={k: m.to(dev) for k, m in mask.items()} if isinstance(mask, dict) else mask.to(dev),
            position_ids=positions.to(dev),
            use_cache=cache is not None,
            **({self.cache_argument: cache} if cache is not None else {}),
        )
        return out.last_hidden_state

    def logits(self, h: Tensor) -> Tensor:
        """Float32 logits (positions, vocab) of hidden states ``h`` (positions, hidden)."""
        import torch

        logits = self.head(h).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def multi_hop_prompt(question: str) -> str:
    """The zero-shot prompt of a multi-hop question (``multi_hop: zero_shot``; the MQuAKE
    protocols put the few-shot demonstrations before it, :mod:`lmcompose.metrics._multi_hop`)."""
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


def _contrast_pairs(
    records: list[EditRecord], owners: list[int], pairs: list[tuple[str, str]]
) -> list[tuple[int, tuple[str, str]]]:
    """(locality pair index, (prompt, the owner's new target)) of each locality prompt whose
    answer is not the new target. locality_prob asks whether the answer still beats the new
    target (ROME's neighborhood score); an answer that is the new target gives no contrast."""
    return [
        (j, (p, records[owners[j]].target_new))
        for j, (p, a) in enumerate(pairs)
        if a.strip() != records[owners[j]].target_new.strip()
    ]


def _unedited_pairs(unedited: list[EditRecord]) -> list[tuple[str, str]]:
    """(prompt, true target) of every control record that has a true target."""
    return [(r.prompt, r.target_true) for r in unedited if r.target_true]


def _forced_pairs(records: list[EditRecord], unedited: list[EditRecord] | None = None) -> list[tuple[str, str]]:
    """Every (prompt, target) an evaluation of ``records`` (and of the control records
    ``unedited``) teacher-forces, each once. Every score reads the target's positions only
    (locality preservation too: the answer positions, as EasyEdit compares them)."""
    wanted: dict[tuple[str, str], None] = {}
    for r in records:
        for p in [r.prompt, *r.rephrases]:
            wanted.setdefault((p, r.target_new))
            if r.target_true:
                wanted.setdefault((p, r.target_true))
    owners, pairs = _locality_pairs(records)
    for pair in pairs:
        wanted.setdefault(pair)
    for _j, pair in _contrast_pairs(records, owners, pairs):
        wanted.setdefault(pair)
    for pair in _unedited_pairs(unedited or []):
        wanted.setdefault(pair)
    return list(wanted)


def _generated_pairs(records: list[EditRecord], locality: bool = True) -> list[tuple[str, str]]:
    """The pairs the f1 scorers generate on (:meth:`Scorer.generate_for`), each once: each edit
    prompt and rephrase with the new target, and (``locality``: for neighbour_knowledge) each
    locality prompt with its answer."""
    pairs = [(p, r.target_new) for r in records for p in [r.prompt, *r.rephrases]]
    return list(dict.fromkeys([*pairs, *(_locality_pairs(records)[1] if locality else [])]))


def _reference_key(records: list[EditRecord]) -> str:
    """What the base-model locality reference of a batch is computed from: a digest of its
    locality prompts and answers in order (``Context.references`` adds the base model's
    identity). Two batches share a reference only when they would compute the same one; case
    ids are no key (a file may repeat them, and two batches with equal ids once shared one
    reference)."""
    _owners, pairs = _locality_pairs(records)
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode()).hexdigest()


class EditMetrics(Metric):
    """Edit success, generalization, locality (preservation/prob), neighbour knowledge, edit
    NLL, the NLL of unedited facts, multi-hop accuracy."""

    name = "edit"
    keys = (
        "edit_success",
        "generalization",
        "locality",
        "edit_nll",
        "unedited_nll",
        *(f"edit_success_{s}" for s in SCORERS),
        *(f"generalization_{s}" for s in SCORERS),
        *LOCALITY_KEYS.values(),
        "multi_hop_accuracy",
        "multi_hop_accuracy_original",
    )
    higher_is_better = {k: True for k in keys} | {"edit_nll": False, "unedited_nll": False}
    requires_edits = True
    Config = EditMetricsConfig
    config: EditMetricsConfig
    _per_pair = False  # True: the earlier teacher forcing, one sequence per pair (tests, benchmarks)

    def compute(self, lm: LM, ctx: Context) -> dict[str, Any]:
        import torch

        records = ctx.edits
        if not records:
            return {}
        with torch.inference_mode(), ctx.progress.task("edit metrics", 4) as advance:
            sc = Scorer(lm, self.config.batch_size, per_pair=self._per_pair)
            # one teacher-forced pass for the whole evaluation: each distinct prompt runs once
            wanted = _forced_pairs(records, ctx.unedited)
            generated = _generated_pairs(records, self.config.neighbour_knowledge)
            continued = set(generated)
            forced = dict(zip(wanted, sc.teacher_forced(wanted, False, [p in continued for p in wanted]), strict=True))
            # the f1 scorers' greedy continuations, every group's in one call (fuller batches)
            greedy = dict(zip(generated, sc.generate_for(generated, [forced[p] for p in generated]), strict=True))
            scores: dict[str, list[float | None]] = {}
            scores.update(self._prompt_group("edit_success", sc, records, lambda r: [r.prompt], forced, greedy))
            scores["edit_nll"] = scores.pop("edit_success_nll")
            advance(1)
            gen = self._prompt_group("generalization", sc, records, lambda r: r.rephrases, forced, greedy)
            gen.pop("generalization_nll", None)
            scores.update(gen)
            advance(1)
            scores.update(self._locality(sc, records, ctx, forced, greedy))
            advance(1)
            scores.update(self._multi_hop(sc, records, ctx))
            advance(1)
        res: dict[str, object] = {k: _record_mean(v) for k, v in scores.items()}
        # the control: NLL of the true targets of records no edit touched (not per edit: they are not edits)
        res["unedited_nll"] = _mean([forced[pair]["nll"] for pair in _unedited_pairs(ctx.unedited)])
        chosen = {
            "edit_success": f"edit_success_{self.config.scorer}",
            "generalization": f"generalization_{self.config.scorer}",
            "locality": LOCALITY_KEYS[self.config.locality_scorer],
        }
        for criterion, key in chosen.items():
            res[criterion] = res.get(key)
        res["edit_scorer"] = self.config.scorer
        res["locality_scorer"] = self.config.locality_scorer
        if any(r.multi_hop is not None for r in records):
            res["multi_hop_protocol"] = self.config.multi_hop
        # each value above is the mean of its per-record scores (over the records that have one)
        res[PER_EDIT_KEY] = {**{c: scores[k] for c, k in chosen.items()}, **scores}
        return res

    def _prompt_group(
        self,
        key: str,
        sc: Scorer,
        records: list[EditRecord],
        prompts_of: Callable[[EditRecord], list[str]],
        forced: Mapping[tuple[str, str], ForcedScore],
        greedy: Mapping[tuple[str, str], list[int]],
    ) -> dict[str, list[float | None]]:
        """Per record (mean over its prompts, None without prompts): f1, accuracy, prob, nll;
        ``greedy``: each pair's greedy continuation (:meth:`Scorer.generate_for`)."""
        owners, pairs_new, pairs_true = [], [], []
        for i, r in enumerate(records):
            for p in prompts_of(r):
                owners.append(i)
                pairs_new.append((p, r.target_new))
                pairs_true.append((p, r.target_true) if r.target_true else None)
        n = len(records)
        if not pairs_new:
            return {f"{key}_{s}": [None] * n for s in (*SCORERS, "nll")}
        tf_new = [forced[pair] for pair in pairs_new]
        gens = [greedy[pair] for pair in pairs_new]
        f1 = [sc.f1(g, sc.encode(p, t)[1]) for g, (p, t) in zip(gens, pairs_new, strict=True)]
        tf_true = {j: forced[pt] for j, pt in enumerate(pairs_true) if pt is not None}
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
        """The base model's argmaxes at the answer positions of the locality prompts (teacher
        forced on prompt + answer; ``locality_preservation`` compares every later model with
        them), kept in ``ctx.references`` and computed only when it holds none for this batch;
        the same teacher-forced pass ``compute`` makes."""
        import torch

        if any(r.multi_hop is not None for r in ctx.edits):  # a missing prompt file: before the first step
            self.multi_hop_protocol(lm, ctx.edits, ctx)
        _owners, pairs = _locality_pairs(ctx.edits)
        content = _reference_key(ctx.edits)
        if not pairs or ctx.references.get(REFERENCE_KIND, content) is not None:
            return
        with torch.inference_mode():
            tf = Scorer(lm, self.config.batch_size, per_pair=self._per_pair).teacher_forced(pairs, False)
        ctx.references.put(REFERENCE_KIND, content, [t["target_argmax"] for t in tf])

    def _locality(
        self,
        sc: Scorer,
        records: list[EditRecord],
        ctx: Context,
        forced: Mapping[tuple[str, str], ForcedScore],
        greedy: Mapping[tuple[str, str], list[int]],
    ) -> dict[str, list[float | None]]:
        """Per record (mean over its locality prompts, None without any): preservation, prob,
        and the neighbour knowledge scores (f1, accuracy against the neighbours' answers)."""
        owners, pairs = _locality_pairs(records)
        n = len(records)
        if not pairs:
            return {k: [None] * n for k in LOCALITY_KEYS.values()}
        tf = [forced[pair] for pair in pairs]
        knowledge: list[float | None] = [None] * n  # neighbour_knowledge: false generates none
        if self.config.neighbour_knowledge:
            gens = [greedy[pair] for pair in pairs]
            f1 = [sc.f1(g, sc.encode(p, a)[1]) for g, (p, a) in zip(gens, pairs, strict=True)]
            knowledge = _per_record(f1, owners, n)
        contrast = _contrast_pairs(records, owners, pairs)
        tf_new = [forced[pn] for _, pn in contrast]
        prob = [1.0 if tf[j]["nll"] < t["nll"] else 0.0 for (j, _), t in zip(contrast, tf_new, strict=True)]
        # preservation: answer-position argmaxes versus the unedited base model's (EasyEdit's locality)
        ref = ctx.references.get(REFERENCE_KIND, _reference_key(records))
        if ref is None or len(ref) != len(pairs):
            ctx.note(
                "locality_preservation needs the base model's reference (EditMetrics.reference on the unedited "
                "model, which the engine calls before the first step): not measured here"
            )
            preserved: list[float | None] = [None] * n
        else:
            same = [
                sum(a == b for a, b in zip(t["target_argmax"], r, strict=True)) / len(r)
                for t, r in zip(tf, ref, strict=True)
            ]
            preserved = _per_record(same, owners, n)
        return {
            "locality_preservation": preserved,
            "locality_prob": _per_record(prob, [owners[j] for j, _ in contrast], n),
            "neighbour_knowledge": knowledge,
            "neighbour_knowledge_accuracy": _per_record([t["accuracy"] for t in tf], owners, n),
        }

    def _multi_hop(self, sc: Scorer, records: list[EditRecord], ctx: Context) -> dict[str, list[float | None]]:
        """Per record with multi-hop questions (None for the others), as MQuAKE scores a case:
        1.0 if the answer to any of its questions is the new answer or one of its aliases
        (``multi_hop_accuracy``), or the answer before editing or one of its aliases
        (``multi_hop_accuracy_original``), else 0.0. Each question is generated on once, asked
        as ``config.multi_hop`` says (:mod:`lmcompose.metrics._multi_hop`)."""
        n = len(records)
        asked = [(i, q) for i, r in enumerate(records) if r.multi_hop is not None for q in r.multi_hop.questions]
        if not asked:
            return {"multi_hop_accuracy": [None] * n, "multi_hop_accuracy_original": [None] * n}
        protocol = self.multi_hop_protocol(sc.lm, records, ctx)
        texts = sc.generate_until([protocol.prompt(q) for _i, q in asked], protocol.max_new_tokens, protocol.finished)
        new: list[float | None] = [None] * n
        old: list[float | None] = [None] * n
        for (i, _q), text in zip(asked, texts, strict=True):
            mh = records[i].multi_hop
            assert mh is not None
            hit_new = protocol.correct(text, mh.new_answer, list(mh.new_answer_aliases))
            hit_old = protocol.correct(text, mh.answer, list(mh.answer_aliases))
            new[i] = max(new[i] or 0.0, 1.0 if hit_new else 0.0)
            old[i] = max(old[i] or 0.0, 1.0 if hit_old else 0.0)
        return {"multi_hop_accuracy": new, "multi_hop_accuracy_original": old}

    def multi_hop_protocol(self, lm: LM, records: list[EditRecord], ctx: Context) -> MultiHopProtocol:
        """The protocol ``config.multi_hop`` names, its prompt file read from the data folder,
        checked against ``records``: every question's prompt and the tokens generated after it
        fit in the model's positions (else one DataError naming the record)."""
        from lmcompose.errors import DataError
        from lmcompose.metrics._multi_hop import load_protocol

        protocol = load_protocol(self.config.multi_hop, ctx.data_dir)
        limit = lm.max_positions
        for r in records:
            for k, q in enumerate(r.multi_hop.questions if r.multi_hop is not None else []):
                length = len(lm.tokenizer(protocol.prompt(q)).input_ids) + protocol.max_new_tokens
                if length > limit:
                    raise DataError(
                        f"edit request {r.case_id!r}: multi-hop question {k} asked with multi_hop: {protocol.name} "
                        f"takes {length} tokens (prompt + {protocol.max_new_tokens} generated), beyond the model's "
                        f"{limit} positions; use a model with more positions, or multi_hop: zero_shot"
                    )
        return protocol
