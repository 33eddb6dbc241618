"""Local files: the samples bundled with lmcompose, a file's checksum, and the checks that a
file someone names is a regular file with text in it (one DataError naming it otherwise)."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from lmcompose.errors import DataError
from lmcompose.paths import MISSING, not_a_file, source_path

__all__ = ["check_text_file", "local_source_file", "read_text_file", "sample_path", "sample_text", "sha256_file"]


def sample_path(name: str) -> Path:
    return Path(str(resources.files("lmcompose").joinpath("sample_data").joinpath(name)))


def sample_text() -> str:
    return sample_path("sample_text.txt").read_text(encoding="utf-8")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def local_source_file(text: str, dataset: str) -> Path:
    """The local file a dataset source names (a path or a ``file://`` URL), checked to be a
    regular file: a missing path, a folder or a device is one DataError naming it."""
    path = source_path(text)
    why = not_a_file(path)
    if why is not None:
        raise DataError(f"{dataset}: source file {path} {why}")
    return path


def check_text_file(path: Path, what: str) -> None:
    """That ``path`` is a regular file (one DataError naming ``what`` and the fix otherwise)."""
    why = not_a_file(path)
    if why is not None:
        raise DataError(
            f"{what} {path}: {'no such file' if why == MISSING else why}; give the path of a UTF-8 text file"
        )


def read_text_file(path: str | Path, what: str) -> str:
    """A UTF-8 text file's contents; a missing, binary, undecodable or empty file is one
    DataError naming it."""
    p = Path(path)
    check_text_file(p, what)
    raw = p.read_bytes()
    if b"\x00" in raw[:8192]:
        raise DataError(f"{what} {p}: a binary file (it holds NUL bytes), not text; give a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {p}: not UTF-8 text (byte {exc.start}: {exc.reason}); convert it to UTF-8") from None
    if not text.strip():
        raise DataError(f"{what} {p}: the file is empty; give a file with text in it")
    return text
