"""Multi-hop accuracy as MQuAKE (Zhong et al., EMNLP 2023) measures it.

MQuAKE asks each of a case's three multi-hop questions after the few-shot demonstrations it
ships (``prompts/multihop-prompts.txt``, or ``prompts/multihop-cot-prompts.txt`` for chain of
thought), generates greedily, reads the answer off the generation and counts the case as
correct when the answer of **any** question is exactly the expected answer or one of its
aliases (its ``run_mello.ipynb``: ``ans == d["new_answer"] or ans in d["new_answer_alias"]``).
The prompt files are read from the data folder (``mquake/prompts/``), as the dataset files
are. ``zero_shot`` keeps lmcompose 0.3's prompt and lenient match for comparison with old rows.
Definitions: docs/metrics.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmcompose.errors import DataError

PROTOCOLS = ("mquake", "mquake_cot", "zero_shot")
#: where each few-shot protocol's demonstrations lie inside the data folder
PROMPT_FILES = {
    "mquake": "mquake/prompts/multihop-prompts.txt",
    "mquake_cot": "mquake/prompts/multihop-cot-prompts.txt",
}
#: new tokens generated at most per question (a standard answer is one line of a few tokens;
#: a chain of thought runs to some 60 tokens in MQuAKE's demonstrations, then "Answer: ...")
NEW_TOKENS = {"mquake": 32, "mquake_cot": 160, "zero_shot": 8}
UPSTREAM = "github.com/princeton-nlp/MQuAKE"
ZERO_SHOT_HINT = "or ask the questions zero-shot: metric_options: {edit: {multi_hop: zero_shot}}"

__all__ = ["NEW_TOKENS", "PROMPT_FILES", "PROTOCOLS", "MultiHopProtocol", "load_protocol"]


@dataclass(frozen=True)
class MultiHopProtocol:
    """How a multi-hop question is asked and its generation scored: ``name`` (one of
    :data:`PROTOCOLS`), the few-shot ``demonstrations`` (empty for ``zero_shot``) and the file
    they came from."""

    name: str
    demonstrations: str = ""
    source: str = ""

    @property
    def max_new_tokens(self) -> int:
        return NEW_TOKENS[self.name]

    def prompt(self, question: str) -> str:
        """The text the model continues. The demonstrations are followed by the question in
        their own format and separator: one ``Q: ... A: ...`` line each in the standard file,
        blocks of ``Question:``/``Thoughts:``/``Answer:`` lines separated by a blank line in
        the chain-of-thought file."""
        question = question.strip()
        if self.name == "mquake":
            return f"{self.demonstrations}\nQ: {question} A:"
        if self.name == "mquake_cot":
            return f"{self.demonstrations}\n\nQuestion: {question}\nThoughts:"
        return f"Q: {question}\nA:"

    def finished(self, generated: str) -> bool:
        """Whether the generation holds its whole answer (generation stops there)."""
        if self.name == "mquake":
            return "\n" in generated
        if self.name == "mquake_cot":
            return _cot_answer_line(generated) is not None or "\n\n" in generated
        return False

    def answer(self, generated: str) -> str:
        """The answer read off a generation: the rest of the ``A:`` line (standard), the text
        after ``Answer:`` on the first line that starts with it before a blank line (chain of
        thought, empty when there is none), the whole generation (zero-shot); stripped of
        surrounding whitespace."""
        if self.name == "mquake":
            return generated.split("\n", 1)[0].strip()
        if self.name == "mquake_cot":  # within the first block: a blank line ends the answer's block
            line = _cot_answer_line(generated.split("\n\n", 1)[0] + "\n")
            return line or ""
        return generated.strip()

    def correct(self, generated: str, answer: str, aliases: list[str]) -> bool:
        """MQuAKE's match: the answer read off the generation is ``answer`` or one of
        ``aliases``, exactly (case and punctuation count). ``zero_shot``: lmcompose 0.3's
        lenient match (case-insensitive; the generation starts with an answer, or its first
        line contains one)."""
        if self.name == "zero_shot":
            text = generated.strip().lower()
            wanted = [a.lower() for a in [answer, *aliases] if a]
            return any(text.startswith(a) or a in text.split("\n")[0] for a in wanted)
        got = self.answer(generated)
        return bool(got) and (got == answer or got in aliases)


def _cot_answer_line(generated: str) -> str | None:
    """The text after ``Answer:`` on the first complete line that starts with it, else None."""
    lines = generated.split("\n")
    for line in lines[:-1]:  # the last piece has no newline after it yet
        if line.strip().startswith("Answer:"):
            return line.strip()[len("Answer:") :].strip()
    return None


def load_protocol(name: str, folder: Path | None) -> MultiHopProtocol:
    """The protocol ``name`` with its demonstrations read from the data folder ``folder``
    (a run's ``Context.data_dir``; None = ``LMCOMPOSE_DATA_DIR``). A few-shot protocol
    without its prompt file is one DataError naming the file and the ways out."""
    from lmcompose.paths import data_dir

    if name not in PROTOCOLS:
        raise DataError(f"multi_hop {name!r} is not one of {', '.join(PROTOCOLS)}")
    if name == "zero_shot":
        return MultiHopProtocol(name)
    rel = PROMPT_FILES[name]
    upstream = f"prompts/{Path(rel).name} of {UPSTREAM}"
    where = f"multi-hop accuracy (multi_hop: {name}) asks MQuAKE's questions after its few-shot prompts"
    folder_path = data_dir(folder)
    if folder_path is None:
        raise DataError(
            f"{where}, read from {rel} in the data folder, and no data folder is set: set LMCOMPOSE_DATA_DIR "
            f"(or --data-dir, a study's data folder) to a folder holding {rel} ({upstream}), {ZERO_SHOT_HINT}"
        )
    path = folder_path / rel
    if not path.is_file():
        raise DataError(f"{where}, read from {path}, which does not exist: put {upstream} there, {ZERO_SHOT_HINT}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{where}, read from {path}, which cannot be read as UTF-8 text ({exc}): replace it with {upstream}"
        ) from None
    text = text.strip("\n")
    if not text.strip():
        raise DataError(f"{where}, read from {path}, which is empty: replace it with {upstream}")
    return MultiHopProtocol(name, text, str(path))
