"""Calibration windows: the calibration text tokenized once per process, and seeded random
windows of it."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from lmcompose.data.corpora import corpus_text
from lmcompose.errors import DataError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from lmcompose.api import Context

__all__ = ["MIN_CALIBRATION_WINDOW", "calibration_windows", "tokenize_corpus", "tokenizer_fingerprint"]

_TOKENIZED: dict[tuple[str, str], torch.Tensor] = {}
#: the shortest calibration window (a text of at most this many tokens cannot calibrate)
MIN_CALIBRATION_WINDOW = 8


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Identifies a tokenizer by its full definition (vocabulary, merges, normalizers)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha1(spec.encode()).hexdigest()


def tokenize_corpus(tokenizer: PreTrainedTokenizerBase, text: str, where: str) -> torch.Tensor:
    """``tokenizer(text)`` as a 1-D LongTensor, cached per (tokenizer, source) in this
    process: a corpus of a few MB takes seconds to tokenize, and every step and metric needs it."""
    key = (tokenizer_fingerprint(tokenizer), where + f":{len(text)}")
    if key not in _TOKENIZED:
        _TOKENIZED[key] = tokenizer(text, return_tensors="pt").input_ids[0]
    return _TOKENIZED[key]


def calibration_windows(
    tokenizer: PreTrainedTokenizerBase, n_samples: int, seqlen: int, seed: int, ctx: Context | None = None
) -> torch.Tensor:
    """``n_samples`` windows of ``seqlen`` tokens at seeded random offsets (LongTensor n x seqlen).
    A text of at most ``seqlen`` tokens gives shorter windows (half the text, at least
    MIN_CALIBRATION_WINDOW tokens, with a note); one too short for that is a DataError."""
    import torch

    text, where = corpus_text("calibration", ctx)
    ids = tokenize_corpus(tokenizer, text, where)
    if ids.numel() <= MIN_CALIBRATION_WINDOW:
        raise DataError(
            f"calibration text {where} is too short ({ids.numel()} tokens; at least {MIN_CALIBRATION_WINDOW + 1} "
            "are needed for windows at distinct offsets): give a longer --calibration-corpus (a text file, "
            "wikitext2 or sample)"
        )
    if ids.numel() <= seqlen:
        seqlen = max(MIN_CALIBRATION_WINDOW, ids.numel() // 2)
        if ctx is not None:
            ctx.note(f"calibration text ({where}) is short: windows cut to {seqlen} tokens")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (n_samples,), generator=gen)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
