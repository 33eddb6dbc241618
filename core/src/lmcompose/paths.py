"""Where lmcompose keeps and finds files: the cache folder and the data folder.

A leaf module: it imports nothing else from lmcompose at import time, so every module
(models, data, edit datasets, the API) can ask for a path without importing the others.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "data_dir", "offline"]


def offline() -> bool:
    """Whether the environment forbids downloads (LMCOMPOSE_OFFLINE, HF_HUB_OFFLINE or
    HF_DATASETS_OFFLINE set to 1/true/yes)."""
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes"} for v in ("LMCOMPOSE_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def cache_dir() -> Path:
    """``LMCOMPOSE_CACHE_DIR``, default ``~/.cache/lmcompose`` (created): converted models,
    downloads, statistics, hub datasets written as JSON lines."""
    d = Path(os.environ.get("LMCOMPOSE_CACHE_DIR") or Path.home() / ".cache" / "lmcompose")
    d.mkdir(parents=True, exist_ok=True)
    return d


def data_dir() -> Path | None:
    """The data folder from ``LMCOMPOSE_DATA_DIR``, or None. A set but missing folder is an error."""
    raw = os.environ.get("LMCOMPOSE_DATA_DIR")
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_dir():
        from lmcompose.errors import DataError

        raise DataError(f"LMCOMPOSE_DATA_DIR={raw!r} is not a folder; point it at a folder laid out like shared/data, or unset it")
    return path
