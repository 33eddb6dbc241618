"""wikitext-2 raw: its files in the data folder (``wikitext-2-raw/``), else the hub dataset."""

from __future__ import annotations

import os
from pathlib import Path

from lmcompose.errors import DataError
from lmcompose.paths import data_dir

__all__ = ["WIKITEXT_FILES", "wikitext_file", "wikitext_rows", "wikitext_text"]


WIKITEXT_FILES = {
    "test": ("wiki.test.raw",),
    "validation": ("wiki.valid.raw",),
    "train": ("wiki.train.raw", "wiki.train.prefix.raw"),
}


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
