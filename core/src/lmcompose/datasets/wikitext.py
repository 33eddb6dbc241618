"""The ``wikitext2`` text corpus: wikitext-2 raw from the data folder, or the hub."""

from __future__ import annotations

from pathlib import Path

from lmcompose.api import TextCorpus
from lmcompose.data import wikitext_text
from lmcompose.errors import DataError


class WikiText2(TextCorpus):
    """wikitext-2 raw (test / validation / train) from the data folder, or the hub."""

    name = "wikitext2"
    splits = ("test", "validation", "train")

    def load_text(self, split: str, source: str | Path | None = None) -> str:
        found = wikitext_text(split, source, folder=self.data_dir)
        if found is None:
            raise DataError(
                f"wikitext-2 {split} not found: set LMCOMPOSE_DATA_DIR (or --data-dir) to a folder with "
                "wikitext-2-raw/wiki.test.raw etc., or pass its folder as source"
            )
        return found[0]
