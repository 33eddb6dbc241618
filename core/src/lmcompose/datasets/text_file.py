"""The ``text-file`` text corpus: any UTF-8 text file."""

from __future__ import annotations

from pathlib import Path

from lmcompose.api import TextCorpus
from lmcompose.errors import DataError


class TextFile(TextCorpus):
    """Any UTF-8 text file (source = its path); one split, 'all'."""

    name = "text-file"
    splits = ("all",)

    def load_text(self, split: str = "all", source: str | Path | None = None) -> str:
        if source is None:
            raise DataError("text-file needs a source: the path of a UTF-8 text file")
        path = Path(source)
        if not path.is_file():
            raise DataError(f"text file {path} does not exist")
        return path.read_text(encoding="utf-8")
