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
    return any(
        os.environ.get(v, "").lower() in {"1", "true", "yes"}
        for v in ("LMCOMPOSE_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def cache_dir() -> Path:
    """``LMCOMPOSE_CACHE_DIR``, default ``~/.cache/lmcompose`` (created): converted models,
    downloads, statistics, hub datasets written as JSON lines."""
    d = Path(os.environ.get("LMCOMPOSE_CACHE_DIR") or Path.home() / ".cache" / "lmcompose")
    d.mkdir(parents=True, exist_ok=True)
    return d


def data_dir(folder: str | Path | None = None) -> Path | None:
    """The data folder: ``folder`` when given (a run's ``Context.data_dir``, which callers
    pass down), else ``LMCOMPOSE_DATA_DIR``, else None. A named but missing folder is an error.
    Nothing here writes the environment: the context is the source of truth for a run."""
    if folder is not None:
        path = Path(folder).expanduser()
        if not path.is_dir():
            from lmcompose.errors import DataError

            raise DataError(
                f"data folder {str(folder)!r} is not a folder; point it at a folder laid out like shared/data"
            )
        return path
    raw = os.environ.get("LMCOMPOSE_DATA_DIR")
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_dir():
        from lmcompose.errors import DataError

        raise DataError(
            f"LMCOMPOSE_DATA_DIR={raw!r} is not a folder; point it at a folder laid out like shared/data, or unset it"
        )
    return path
