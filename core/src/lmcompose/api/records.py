"""Edit records: one edit request in the schema every edit dataset normalizes to, its
locality prompts and its multi-hop questions (each checked on construction)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lmcompose.errors import DataError, describe_value

__all__ = ["EditRecord", "LocalityPrompt", "MultiHop"]


@dataclass
class LocalityPrompt:
    """A prompt whose answer an edit should leave alone."""

    prompt: str
    answer: str


@dataclass
class MultiHop:
    """MQuAKE-style multi-hop questions; any question answered correctly counts."""

    questions: list[str]
    answer: str
    new_answer: str
    answer_aliases: list[str] = field(default_factory=list)
    new_answer_aliases: list[str] = field(default_factory=list)


def _check_multi_hop(mh: MultiHop, where: str) -> None:
    """What multi-hop scoring reads: at least one question, the answers before and after
    editing, and their aliases, all non-empty strings; one DataError naming the field."""
    if not mh.questions:
        raise DataError(f"{where}: multi_hop.questions is empty; give the multi-hop questions (any one may be right)")
    for k, q in enumerate(mh.questions):
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{where}: multi_hop.questions[{k}] must be a non-empty string, got {describe_value(q)}")
    for key in ("answer", "new_answer"):
        value = getattr(mh, key)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: multi_hop.{key} must be a non-empty string, got {describe_value(value)}")
    for key in ("answer_aliases", "new_answer_aliases"):
        value = getattr(mh, key)
        if not isinstance(value, list | tuple):
            raise DataError(f"{where}: multi_hop.{key} must be a list of strings, got {describe_value(value)}")
        for k, a in enumerate(value):
            if not isinstance(a, str):
                raise DataError(f"{where}: multi_hop.{key}[{k}] must be a string, got {describe_value(a)}")


@dataclass
class EditRecord:
    """One edit request in the normalized schema shared by all edit datasets.

    ``prompt`` has the subject filled in; ``template`` gives it back with ``{}`` in the
    subject's place (the form MEMIT/ROME need). ``raw`` keeps the dataset's own record.
    """

    case_id: str
    subject: str
    prompt: str
    target_new: str
    target_true: str | None = None
    rephrases: list[str] = field(default_factory=list)
    locality: list[LocalityPrompt] = field(default_factory=list)
    multi_hop: MultiHop | None = None
    source: dict[str, object] = field(default_factory=dict)
    raw: dict[str, object] | None = None

    def __post_init__(self) -> None:
        where = f"edit record {self.case_id!r}"
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise DataError(f"{where}: empty prompt")
        if not isinstance(self.target_new, str) or not self.target_new.strip():
            raise DataError(f"{where}: empty target_new")
        if not isinstance(self.subject, str) or not self.subject.strip():
            raise DataError(f"{where}: empty subject")
        if self.subject not in self.prompt:
            raise DataError(f"{where}: subject {self.subject!r} does not occur in prompt {self.prompt!r}")
        if self.target_true is not None and not isinstance(self.target_true, str):
            raise DataError(f"{where}: target_true must be a string or null, got {type(self.target_true).__name__}")
        for key in ("rephrases", "locality"):
            value = getattr(self, key)
            if not isinstance(value, list | tuple):
                raise DataError(
                    f'{where}: {key} must be a list, got {type(value).__name__} (a single prompt? write ["..."])'
                )
        if not all(isinstance(r, str) and r.strip() for r in self.rephrases):
            raise DataError(f"{where}: every rephrase must be a non-empty string")
        if not all(isinstance(lp, LocalityPrompt | Mapping) for lp in self.locality):
            raise DataError(f"{where}: every locality item must be {{prompt, answer}}")
        try:
            self.locality = [lp if isinstance(lp, LocalityPrompt) else LocalityPrompt(**lp) for lp in self.locality]
            if isinstance(self.multi_hop, Mapping):
                self.multi_hop = MultiHop(**self.multi_hop)
        except TypeError as exc:
            raise DataError(
                f"{where}: {exc} (locality items are {{prompt, answer}}; multi_hop is "
                "{questions, answer, new_answer})"
            ) from None
        for lp in self.locality:
            if not isinstance(lp.prompt, str) or not isinstance(lp.answer, str):
                raise DataError(f"{where}: a locality item's prompt and answer must be strings")
        if self.multi_hop is not None and (
            not isinstance(self.multi_hop, MultiHop)
            or isinstance(self.multi_hop.questions, str)
            or not isinstance(self.multi_hop.questions, list)
        ):
            raise DataError(f"{where}: multi_hop must be {{questions: [...], answer, new_answer}}")
        if self.multi_hop is not None:
            _check_multi_hop(self.multi_hop, where)

    @property
    def template(self) -> str:
        """The prompt with the (first occurrence of the) subject replaced by ``{}``."""
        i = self.prompt.index(self.subject)
        escaped = [
            s.replace("{", "{{").replace("}", "}}") for s in (self.prompt[:i], self.prompt[i + len(self.subject) :])
        ]
        return escaped[0] + "{}" + escaped[1]

    def to_dict(self, with_raw: bool = False) -> dict[str, object]:
        d = dataclasses.asdict(self)
        if not with_raw:
            d.pop("raw")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> EditRecord:
        """The record of mapping ``d`` (JSON data; each field is checked on construction)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise DataError(f"edit record has unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        missing = {"case_id", "subject", "prompt", "target_new"} - set(d)
        if missing:
            raise DataError(f"edit record {d.get('case_id', '?')!r} is missing {sorted(missing)}")
        # each field's type is checked by __post_init__, one DataError naming the field
        fields: dict[str, Any] = dict(d)
        fields["case_id"] = str(fields["case_id"])
        return cls(**fields)
