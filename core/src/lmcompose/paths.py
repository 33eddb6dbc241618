"""Where lmcompose keeps and finds files: the cache folder and the data folder.

A leaf module: it imports nothing else from lmcompose at import time, so every module
(models, data, edit datasets, the API) can ask for a path without importing the others.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["MISSING", "cache_dir", "data_dir", "not_a_file", "offline", "source_path"]


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


def source_path(text: str) -> Path:
    """The local path a source names: a path as written (``~`` expanded), or a ``file://``
    URL (``file:///abs/path``, ``file://localhost/abs/path``). A ``file://`` URL naming
    another host is a DataError (``file://data/x.json`` is host ``data``, not a folder)."""
    if text.startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            from lmcompose.errors import DataError

            raise DataError(
                f"{text}: a file:// URL names a host ({parts.netloc!r}) before the path; write file:///absolute/path, "
                "or give the path itself"
            )
        return Path(unquote(parts.path)).expanduser()
    return Path(text).expanduser()


MISSING = "does not exist"


def not_a_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file, in words (``does not exist``, ``is a folder,
    not a file``, ``is not a regular file``), or None when it is one."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return MISSING
    except ValueError:  # a NUL character: no path can hold one
        return "is not a path (it holds a NUL character)"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file; name the file in it"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a pipe, device or socket); give a file"
    return None
