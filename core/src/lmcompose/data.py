"""Where data comes from: the data folder, text corpora, calibration windows, samples.

``LMCOMPOSE_DATA_DIR`` (or ``--data-dir``) names a folder laid out like the shared data
folder: ``wikitext-2-raw/``, ``counterfact/``, ``zsre/``, ``mquake/``. It is consulted before
any download. Without it (and without network) commands run on the small samples bundled
in ``lmcompose/sample_data`` and say so.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from lmcompose.errors import DataError
from lmcompose.paths import cache_dir, data_dir

__all__ = [
    "cache_dir",
    "calibration_windows",
    "corpus_identity",
    "data_dir",
    "sample_path",
    "sample_text",
    "wikitext_file",
    "wikitext_text",
]

WIKITEXT_FILES = {
    "test": ("wiki.test.raw",),
    "validation": ("wiki.valid.raw",),
    "train": ("wiki.train.raw", "wiki.train.prefix.raw"),
}


def sample_path(name: str) -> Path:
    return Path(str(resources.files("lmcompose").joinpath("sample_data", name)))


def sample_text() -> str:
    return sample_path("sample_text.txt").read_text(encoding="utf-8")


def wikitext_rows(raw: str) -> list[str]:
    """The Hugging Face rows of a wikitext-2 raw file (one row per line; blank lines empty)."""
    return [line + "\n" if line.strip() else "" for line in raw.split("\n")[:-1]]


def wikitext_file(split: str, source: str | Path | None = None, folder: str | Path | None = None) -> Path | None:
    """The local wikitext-2 raw file of ``split``: in ``source`` (a folder), else in the data
    folder's ``wikitext-2-raw/`` (``folder``, a run's ``Context.data_dir``, else
    LMCOMPOSE_DATA_DIR); None when neither has it."""
    folders = []
    if source is not None:
        folders.append(Path(source))
    dd = data_dir(folder)
    if dd is not None:
        folders.append(dd / "wikitext-2-raw")
    for folder in folders:
        for fname in WIKITEXT_FILES[split]:
            f = folder / fname
            if f.exists():
                return f
    return None


def corpus_identity(ctx: Any = None) -> dict[str, str]:
    """Which text perplexity (``test``) and calibration read, by file name and checksum, as
    :func:`corpus_text` would choose it for ``ctx``'s corpus settings (nothing is tokenized):
    a run records it, and a resume onto other text is refused."""
    from lmcompose.corpora import corpus_identity as identity
    from lmcompose.corpora import parse_corpus

    return identity(
        parse_corpus(getattr(ctx, "ppl_corpus", None), "ppl_corpus"),
        parse_corpus(getattr(ctx, "calibration_corpus", None), "calibration_corpus"),
        getattr(ctx, "data_dir", None),
    )


def wikitext_text(
    split: str, source: str | Path | None = None, problems: list[str] | None = None, folder: str | Path | None = None
) -> tuple[str, str] | None:
    """``"\\n\\n".join`` of the split's rows and where it came from, or None if unavailable.

    Looks in ``source`` (a folder), then the data folder (``folder``, else
    LMCOMPOSE_DATA_DIR), then (unless HF_HUB_OFFLINE=1) the hub dataset
    ``wikitext``/``wikitext-2-raw-v1``; why the hub failed is appended to ``problems`` when given.
    """
    if split not in WIKITEXT_FILES:
        raise DataError(f"wikitext-2 has no split {split!r}; use one of {', '.join(WIKITEXT_FILES)}")
    f = wikitext_file(split, source, folder)
    if f is not None:
        return "\n\n".join(wikitext_rows(f.read_text(encoding="utf-8"))), str(f)
    if os.environ.get("HF_HUB_OFFLINE", "") not in {"1", "true", "yes"}:
        try:  # pragma: no cover - needs network
            import datasets

            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
            return "\n\n".join(ds["text"]), f"hub:wikitext/wikitext-2-raw-v1/{split}"
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - no network, no such cache entry, ...
            if problems is not None:
                problems.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
    return None


def corpus_text(split: str, ctx: Any = None) -> tuple[str, str]:
    """Text for perplexity (``test``) or calibration (``calibration``): the corpus ``ctx``
    names (``ctx.ppl_corpus`` / ``ctx.calibration_corpus``, see :mod:`lmcompose.corpora`),
    by default wikitext-2 or, when it cannot be had, the bundled sample with a note."""
    from lmcompose.corpora import ROLES, load_corpus, parse_corpus

    if split not in ROLES:
        raise DataError(f"corpus role {split!r} is not one of {', '.join(ROLES)}")
    key = ROLES[split][0]
    return load_corpus(parse_corpus(getattr(ctx, key, None), key), split, ctx)


_TOKENIZED: dict[tuple[str, str], Any] = {}
#: the shortest calibration window (a text of at most this many tokens cannot calibrate)
MIN_CALIBRATION_WINDOW = 8


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identifies a tokenizer by its full definition (vocabulary, merges, normalizers)."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha1(spec.encode()).hexdigest()


def tokenize_corpus(tokenizer: Any, text: str, where: str) -> Any:
    """``tokenizer(text)`` as a 1-D LongTensor, cached per (tokenizer, source) in this
    process: a corpus of a few MB takes seconds to tokenize, and every step and metric needs it."""
    key = (tokenizer_fingerprint(tokenizer), where + f":{len(text)}")
    if key not in _TOKENIZED:
        _TOKENIZED[key] = tokenizer(text, return_tensors="pt").input_ids[0]
    return _TOKENIZED[key]


def calibration_windows(tokenizer: Any, n_samples: int, seqlen: int, seed: int, ctx: Any = None):
    """``n_samples`` windows of ``seqlen`` tokens at seeded random offsets (LongTensor n x seqlen).
    A text of at most ``seqlen`` tokens gives shorter windows (half the text, at least
    MIN_CALIBRATION_WINDOW tokens, with a note); one too short for that is a DataError."""
    import torch

    text, where = corpus_text("calibration", ctx)
    ids = tokenize_corpus(tokenizer, text, where)
    if ids.numel() <= MIN_CALIBRATION_WINDOW:
        from lmcompose.errors import DataError

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
