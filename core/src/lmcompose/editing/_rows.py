"""Edit requests as token rows: the subject's last token, the target, padding and grouping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from lmcompose.api import EditRecord
from lmcompose.metrics.edits import budget_batches, target_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def subject_last_index(tok: PreTrainedTokenizerBase, text: str, subject_end: int) -> tuple[list[int], int]:
    """Token ids of ``text`` (with the tokenizer's special tokens) and the index of the token
    holding the subject's last character (``subject_end`` is a character offset)."""
    if getattr(tok, "is_fast", False):
        enc = tok(text, add_special_tokens=True, return_offsets_mapping=True)
        ids, offsets = enc.input_ids, enc.offset_mapping
        last = None
        for i, (a, b) in enumerate(offsets):
            if b > a and a < subject_end:
                last = i
        if last is not None:
            return list(ids), last
    ids = tok(text, add_special_tokens=True).input_ids
    return list(ids), len(tok(text[:subject_end], add_special_tokens=True).input_ids) - 1


@dataclass
class Row:
    """One sequence of the v* batch."""

    ids: list[int]
    lookup: int
    edit: int
    kl: bool = False
    target_positions: list[int] = field(default_factory=list)  # logits here predict target_ids
    target_ids: list[int] = field(default_factory=list)


def target_ids(tok: PreTrainedTokenizerBase, record: EditRecord) -> list[int]:
    ids = tok(target_text(record.prompt, record.target_new), add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"edit {record.case_id!r}: target {record.target_new!r} tokenizes to nothing")
    return list(ids)


def rewrite_rows(tok: PreTrainedTokenizerBase, records: Sequence[EditRecord], templates: Sequence[str]) -> list[Row]:
    """Every (edit, context template) with the target's first tokens appended, then one
    '{subject} is a' row per edit for the KL term (MEMIT compute_z)."""
    rows: list[Row] = []
    for e, r in enumerate(records):
        tgt = target_ids(tok, r)
        s_end = r.prompt.index(r.subject) + len(r.subject)
        for t in templates:
            prefix = t[: t.index("{}")]
            ids, lookup = subject_last_index(tok, prefix + r.prompt, len(prefix) + s_end)
            n = len(ids)
            rows.append(Row(ids + tgt[:-1], lookup, e, False, list(range(n - 1, n - 1 + len(tgt))), tgt))
    for e, r in enumerate(records):
        text = f"{r.subject} is a"
        ids, lookup = subject_last_index(tok, text, len(r.subject))
        rows.append(Row(ids, lookup, e, True))
    return rows


def key_rows(tok: PreTrainedTokenizerBase, records: Sequence[EditRecord], templates: Sequence[str]) -> list[Row]:
    """Every (edit, context template) prompt without the target (MEMIT compute_ks)."""
    rows = []
    for e, r in enumerate(records):
        s_end = r.prompt.index(r.subject) + len(r.subject)
        for t in templates:
            prefix = t[: t.index("{}")]
            ids, lookup = subject_last_index(tok, prefix + r.prompt, len(prefix) + s_end)
            rows.append(Row(ids, lookup, e))
    return rows


def prefix_groups(rows: Sequence[Row], max_tokens: int) -> list[list[int]]:
    """Indices of rows grouped by prefix length (the lookup index), then by suffix length,
    each group's padded suffix size within ``max_tokens``."""
    by_prefix: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_prefix.setdefault(r.lookup, []).append(i)
    groups: list[list[int]] = []
    for _, idx in sorted(by_prefix.items()):
        for sub in length_groups([len(rows[i].ids) - rows[i].lookup for i in idx], max_tokens):
            groups.append([idx[k] for k in sub])
    return groups


def length_groups(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped by length (sorted), each group's padded size within ``max_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return budget_batches(order, max_tokens, lambda group: lengths[group[-1]])  # sorted: the last is widest


def pad_right(seqs: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out


def pad_id(tok: PreTrainedTokenizerBase) -> int:
    for v in (tok.pad_token_id, tok.eos_token_id, 0):
        if v is not None:
            return int(v)
    return 0
