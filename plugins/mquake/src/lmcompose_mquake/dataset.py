"""MQuAKE (Zhong et al. 2023): one case = several CounterFact-style edits + multi-hop questions.

Mapping, per case: one EditRecord per element of ``requested_rewrite`` (prompt = its
template with the subject filled in, target_new/target_true from it, rephrases = [its
``question``]); locality = the case's single hops that no edit changes (cloze + answer);
the first record carries ``multi_hop`` (the 3 questions, answer/new_answer and aliases),
so multi-hop accuracy counts each case once. case_id is "<case>/<k>". Multi-hop accuracy
(core's edit metric) asks the questions after MQuAKE's few-shot prompts, which the data
folder holds in ``mquake/prompts/`` (docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from lmcompose.api import EditRecord, LocalityPrompt, MultiHop
from lmcompose.edit_data import JsonEditDataset, fill_template, need_list, need_str
from lmcompose.errors import DataError, describe_value

URL = "https://raw.githubusercontent.com/princeton-nlp/MQuAKE/main/datasets/MQuAKE-CF-3k-v2.json"


def _aliases(raw: Mapping[str, Any], key: str) -> list[str]:
    """The aliases under ``key`` (absent or null: none); each must be a string (blank ones are
    dropped), else one DataError naming the field."""
    if raw.get(key) is None:
        return []
    out = []
    for k, a in enumerate(need_list(raw, key)):
        if not isinstance(a, str):
            raise DataError(f"field '{key}[{k}]' must be a string, got {describe_value(a)}")
        if a.strip():
            out.append(a)
    return out


def _questions(raw: Mapping[str, Any]) -> list[str]:
    """The case's multi-hop questions: a non-empty list of non-empty strings."""
    questions = need_list(raw, "questions")
    if not questions:
        raise DataError("field 'questions' is empty; multi-hop accuracy asks these questions")
    for k, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"field 'questions[{k}]' must be a non-empty string, got {describe_value(q)}")
    return list(questions)


class MQuAKE(JsonEditDataset):
    """MQuAKE cases: several edits each, with multi-hop questions."""

    name = "mquake"
    #: the first that the data folder holds: MQuAKE-CF-3k (v2, then v1), the set MQuAKE's
    #: published numbers use, then AKEW's subset of it, then MQuAKE-hard (4 edits a case, harder
    #: and not comparable with CF-3k's numbers)
    data_files = (
        "mquake/MQuAKE-CF-3k-v2.json",
        "mquake/MQuAKE-CF-3k.json",
        "mquake/AKEW-MQuAKE-CF.json",
        "mquake/MQuAKE-hard.json",
    )
    url = URL
    sample = Path(str(resources.files("lmcompose_mquake").joinpath("sample").joinpath("mquake_sample.json")))

    def parse(self, raw: Mapping[str, Any], index: int) -> list[EditRecord]:
        if "case_id" not in raw:
            raise DataError("missing field 'case_id'")
        rewrites = need_list(raw, "requested_rewrite")
        if not rewrites:
            raise DataError("field 'requested_rewrite' is empty")
        multi_hop = MultiHop(
            questions=_questions(raw),
            answer=need_str(raw, "answer"),
            new_answer=need_str(raw, "new_answer"),
            answer_aliases=_aliases(raw, "answer_alias"),
            new_answer_aliases=_aliases(raw, "new_answer_alias"),
        )
        old_hops = need_list(raw, "single_hops", allow_missing=True)
        new_hops = need_list(raw, "new_single_hops", allow_missing=True)
        unchanged = [
            LocalityPrompt(o["cloze"], o["answer"])
            for o, n in zip(old_hops, new_hops, strict=False)
            if isinstance(o, Mapping)
            and isinstance(n, Mapping)
            and o.get("answer") == n.get("answer")
            and isinstance(o.get("cloze"), str)
            and isinstance(o.get("answer"), str)
            and o["answer"].strip()
        ]
        records = []
        for k, rr in enumerate(rewrites):
            where = f"requested_rewrite[{k}]."
            if not isinstance(rr, Mapping):
                raise DataError(f"{where[:-1]} is not an object")
            subject = need_str(rr, "subject", where)
            prompt = fill_template(need_str(rr, "prompt", where), subject, where + "prompt")
            tn, tt = rr.get("target_new"), rr.get("target_true")
            if not isinstance(tn, Mapping) or not isinstance(tt, Mapping):
                raise DataError(f"missing field '{where}target_new' or '{where}target_true' (objects with 'str')")
            question = rr.get("question")
            records.append(
                EditRecord(
                    case_id=f"{raw['case_id']}/{k}",
                    subject=subject,
                    prompt=prompt,
                    target_new=need_str(tn, "str", where + "target_new."),
                    target_true=need_str(tt, "str", where + "target_true."),
                    rephrases=[question] if isinstance(question, str) and question.strip() else [],
                    locality=list(unchanged),
                    multi_hop=multi_hop if k == 0 else None,
                    source={"dataset": "mquake", "id": raw["case_id"], "edit_index": k, "edits_in_case": len(rewrites)},
                )
            )
        return records
