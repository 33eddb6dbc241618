"""The ``records`` edit dataset: edit requests already in lmcompose's EditRecord schema."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lmcompose.api import EditRecord
from lmcompose.data import sample_path
from lmcompose.data.edits import JsonEditDataset
from lmcompose.errors import DataError


class Records(JsonEditDataset):
    """Edit requests already in lmcompose's EditRecord schema (JSON array or JSONL); default:
    the bundled sample of 20 counterfactual facts."""

    name = "records"

    def resolve_source(self, source: str | Path | None) -> Path:
        return super().resolve_source(source) if source is not None else sample_path("sample_edits.jsonl")

    def parse(self, raw: Mapping[str, object], index: int) -> list[EditRecord]:
        try:
            return [EditRecord.from_dict(raw)]
        except TypeError as exc:
            raise DataError(str(exc)) from None
