"""Built-in datasets: ``records`` (EditRecord JSONL, default the bundled sample), and the
text corpora ``wikitext2`` and ``text-file``."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from lmcompose.api import EditDataset, EditRecord, TextCorpus
from lmcompose.data import sample_path, wikitext_text
from lmcompose.errors import DataError, UsageError


def select_records(records: list[Any], limit: int | None, seed: int | None, replicate: int = 0) -> list[Any]:
    """Replicate ``replicate`` of size ``limit`` from a seeded permutation: replicate k never
    overlaps replicate j. ``seed=None`` keeps file order."""
    order = list(range(len(records)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    if limit is None:
        if replicate:
            raise UsageError("replicates need a limit (the batch size)")
        return [records[i] for i in order]
    if limit < 1:
        raise UsageError(f"limit={limit}: ask for at least one record")
    start = replicate * limit
    if start + limit > len(records):
        raise UsageError(
            f"replicate {replicate} of {limit} records needs {start + limit} records; the dataset has {len(records)}. "
            "Use fewer edits or fewer replicates"
        )
    return [records[i] for i in order[start : start + limit]]


def read_json_records(path: Path) -> list[dict[str, Any]]:
    """Records from a .json array or a .jsonl file, with errors naming file and line/record."""
    if not path.exists():
        raise DataError(f"dataset file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"dataset file {path} is empty")
    if path.suffix == ".jsonl":
        out = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); expected a JSON array or a .jsonl file") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    return data


class Records(EditDataset):
    """Edit requests already in lmcompose's EditRecord schema (JSON array or JSONL); default: the bundled sample of 20 counterfactual facts."""

    name = "records"

    def load(self, source: str | Path | None = None, limit: int | None = None, seed: int | None = 0,
             replicate: int = 0, skip_invalid: bool = False) -> list[EditRecord]:
        from lmcompose.edit_data import JsonEditDataset

        class _Records(JsonEditDataset):
            name = "records"

            def resolve_source(self, src: str | Path | None) -> Path:
                return super().resolve_source(src) if src is not None else sample_path("sample_edits.jsonl")

            def parse(self, raw: Any, index: int) -> list[EditRecord]:
                try:
                    return [EditRecord.from_dict(raw)]
                except TypeError as exc:
                    raise DataError(str(exc)) from None

        inner = _Records()
        try:
            return inner.load(source, limit, seed, replicate, skip_invalid)
        finally:
            self.notes = inner.notes


class WikiText2(TextCorpus):
    """wikitext-2 raw (test / validation / train) from the data folder, or the hub."""

    name = "wikitext2"
    splits = ("test", "validation", "train")

    def load_text(self, split: str, source: str | Path | None = None) -> str:
        found = wikitext_text(split, source)
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
