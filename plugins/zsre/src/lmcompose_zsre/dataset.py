"""zsRE in the MEND/ROME schema or EasyEdit's flat schema.

MEND/ROME mapping (case_id = the record's position in the file, zsRE has no ids):
prompt = src (the subject must occur in it); rephrases = [rephrase]; locality =
[(loc + "?", loc_ans)] exactly as ROME builds its neighborhood prompt (the "nq question: "
prefix kept). The target depends on the convention (see the README).
``portability`` (EasyEdit's one-hop question) stays in ``raw``.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from lmcompose.api import EditRecord, LocalityPrompt
from lmcompose.edit_data import JsonEditDataset, need_list, need_str, parse_easyedit_flat
from lmcompose.errors import DataError

ROME_URL = "https://rome.baulab.info/data/dsets/zsre_mend_eval.json"


class ZsRE(JsonEditDataset):
    """zsRE question-answering edits; target_new = alt, target_true = answers[0] (EasyEdit)."""

    name = "zsre"
    convention: ClassVar[str] = "easyedit"
    data_files = ("zsre/zsre_mend_eval.json", "zsre/zsre_mend_eval_portability_gpt4.json")
    url = ROME_URL
    sample = Path(str(resources.files("lmcompose_zsre").joinpath("sample").joinpath("zsre_sample.json")))
    # some of zsRE's alternative answers equal the true one (29 of the 1,037 records of
    # zsre_mend_eval_portability_gpt4.json): kept, with a note
    no_op_edits = "note"

    def parse(self, raw: Mapping[str, Any], index: int) -> list[EditRecord]:
        if "src" not in raw and "prompt" in raw and "target_new" in raw:
            return [parse_easyedit_flat(raw, self.name, index)]
        src = need_str(raw, "src")
        subject = need_str(raw, "subject")
        answers = need_list(raw, "answers")
        if not answers or not isinstance(answers[0], str) or not answers[0].strip():
            raise DataError("field 'answers' must hold at least one non-empty answer")
        if self.convention == "easyedit":
            target_new, target_true = need_str(raw, "alt"), answers[0]
        else:
            target_new, target_true = answers[0], None
        rephrases = [raw["rephrase"]] if isinstance(raw.get("rephrase"), str) and raw["rephrase"].strip() else []
        locality = []
        if raw.get("loc"):
            locality.append(LocalityPrompt(need_str(raw, "loc") + "?", need_str(raw, "loc_ans")))
        case_id = raw.get("case_id", index)  # zsRE files have none: the position in the file
        return [
            EditRecord(
                case_id=str(case_id),
                subject=subject,
                prompt=src,
                target_new=target_new,
                target_true=target_true,
                rephrases=rephrases,
                locality=locality,
                source={"dataset": self.name, "id": case_id, "schema": "mend"},
            )
        ]


class ZsRERome(ZsRE):
    """zsRE question-answering edits; target_new = answers[0], no true target (ROME/MEMIT)."""

    name = "zsre-rome"
    convention = "rome"
