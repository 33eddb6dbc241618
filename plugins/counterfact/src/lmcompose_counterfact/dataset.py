"""CounterFact (Meng et al. 2022) in the ROME/MEMIT schema or EasyEdit's flat schema.

ROME/MEMIT mapping: prompt = requested_rewrite.prompt with the subject filled in;
target_new/target_true = requested_rewrite.target_new.str / target_true.str; rephrases =
paraphrase_prompts; locality = neighborhood_prompts, each answered by target_true (ROME's
neighborhood score: the true object should stay more likely than the new one).
attribute_prompts and generation_prompts stay in ``raw``.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from lmcompose.api import EditRecord, LocalityPrompt
from lmcompose.edit_data import (
    JsonEditDataset,
    fill_template,
    need_list,
    need_str,
    parse_easyedit_flat,
)
from lmcompose.errors import DataError

ROME_URL = "https://rome.baulab.info/data/dsets/counterfact.json"


def parse_rome(raw: Mapping[str, Any]) -> EditRecord:
    rr = raw.get("requested_rewrite")
    if not isinstance(rr, Mapping):
        raise DataError("missing field 'requested_rewrite' (an object)")
    subject = need_str(rr, "subject", "requested_rewrite.")
    template = need_str(rr, "prompt", "requested_rewrite.")
    prompt = fill_template(template, subject, "requested_rewrite.prompt")
    targets = {}
    for key in ("target_new", "target_true"):
        t = rr.get(key)
        if not isinstance(t, Mapping):
            raise DataError(f"missing field 'requested_rewrite.{key}' (an object with 'str')")
        targets[key] = need_str(t, "str", f"requested_rewrite.{key}.")
    if "case_id" not in raw:
        raise DataError("missing field 'case_id'")
    rephrases = [
        p for p in need_list(raw, "paraphrase_prompts", allow_missing=True) if isinstance(p, str) and p.strip()
    ]
    locality = [
        LocalityPrompt(p, targets["target_true"])
        for p in need_list(raw, "neighborhood_prompts", allow_missing=True)
        if isinstance(p, str) and p.strip()
    ]
    return EditRecord(
        case_id=str(raw["case_id"]),
        subject=subject,
        prompt=prompt,
        target_new=targets["target_new"],
        target_true=targets["target_true"],
        rephrases=rephrases,
        locality=locality,
        source={"dataset": "counterfact", "id": raw["case_id"], "schema": "rome", "relation_id": rr.get("relation_id")},
    )


class CounterFact(JsonEditDataset):
    """CounterFact edit requests (ROME/MEMIT or EasyEdit schema, detected per record)."""

    name = "counterfact"
    data_files = (
        "counterfact/counterfact.json",
        "counterfact/counterfact_500.json",
        "counterfact/counterfact-edit.json",
    )
    url = ROME_URL
    sample = Path(str(resources.files("lmcompose_counterfact").joinpath("sample").joinpath("counterfact_sample.json")))

    def parse(self, raw: Mapping[str, Any], index: int) -> list[EditRecord]:
        if "requested_rewrite" in raw:
            return [parse_rome(raw)]
        if "prompt" in raw and "target_new" in raw:
            return [parse_easyedit_flat(raw, "counterfact", index)]
        raise DataError("neither the ROME schema (requested_rewrite) nor EasyEdit's (prompt, subject, target_new)")
