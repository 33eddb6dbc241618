"""Built-in datasets: ``records`` (EditRecord JSONL, default the bundled sample), and the
text corpora ``wikitext2`` and ``text-file``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmcompose.api import EditRecord, TextCorpus
from lmcompose.data import sample_path, wikitext_text
from lmcompose.edit_data import JsonEditDataset
from lmcompose.errors import DataError


class Records(JsonEditDataset):
    """Edit requests already in lmcompose's EditRecord schema (JSON array or JSONL); default: the bundled sample of 20 counterfactual facts."""

    name = "records"

    def resolve_source(self, source: str | Path | None) -> Path:
        return super().resolve_source(source) if source is not None else sample_path("sample_edits.jsonl")

    def parse(self, raw: Any, index: int) -> list[EditRecord]:
        try:
            return [EditRecord.from_dict(raw)]
        except TypeError as exc:
            raise DataError(str(exc)) from None


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
