"""{{name}}: an edit dataset in a simple JSON schema (an example to adapt).

Each record: {"id", "subject", "template" (with "{}" for the subject), "new", "old",
"paraphrases": [...], "unrelated": [{"prompt", "answer"}]}. JsonEditDataset gives source
resolution (file, URL, data folder, bundled sample), per-record errors naming file,
record and field, --skip-invalid, and seeded disjoint replicate selection.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from lmcompose import EditRecord, LocalityPrompt
from lmcompose.edit_data import JsonEditDataset, fill_template, need_list, need_str


class {{Class}}(JsonEditDataset):
    """Edit requests in the {{name}} JSON schema."""

    name = "{{name}}"
    data_files = ("{{name}}/{{name}}.json",)
    url = None
    sample = Path(str(resources.files("{{module}}").joinpath("sample", "sample.json")))

    def parse(self, raw: Mapping[str, Any], index: int) -> list[EditRecord]:
        subject = need_str(raw, "subject")
        prompt = fill_template(need_str(raw, "template"), subject, "template")
        unrelated = need_list(raw, "unrelated", allow_missing=True)
        return [EditRecord(
            case_id=str(raw.get("id", index)), subject=subject, prompt=prompt,
            target_new=need_str(raw, "new"), target_true=raw.get("old"),
            rephrases=[p for p in need_list(raw, "paraphrases", allow_missing=True) if isinstance(p, str)],
            locality=[LocalityPrompt(need_str(u, "prompt"), need_str(u, "answer")) for u in unrelated],
            source={"dataset": self.name, "id": raw.get("id", index)},
        )]
