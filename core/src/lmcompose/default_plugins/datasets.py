from __future__ import annotations

from lmcompose.hookspecs import Register, hookimpl


@hookimpl
def register_datasets(register: Register) -> None:
    register(
        "lmcompose.datasets.records:Records",
        name="records",
        summary="EditRecord JSON/JSONL; default the bundled 20-fact sample",
        kind="edits",
    )
    register(
        "lmcompose.datasets.wikitext:WikiText2",
        name="wikitext2",
        summary="wikitext-2 raw test/validation/train",
        kind="text",
    )
    register("lmcompose.datasets.text_file:TextFile", name="text-file", summary="any UTF-8 text file", kind="text")
