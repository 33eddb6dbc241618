"""Loaders for the real unlearning benchmarks' files: WMDP, TOFU and MUSE.

Nothing can be downloaded here, so these read the files a user already has, from a local
path or from the ``datasets`` cache:

* **four-way questions** (WMDP's ``cais/wmdp`` configs ``wmdp-bio``, ``wmdp-chem``,
  ``wmdp-cyber``, split ``test``; MMLU's ``cais/mmlu`` has the same fields): records with
  ``question``, ``choices`` (four strings) and ``answer`` (the right choice's index, or its
  letter A-D); an optional ``subject`` names the topic in WMDP's description line;
* **question-answer pairs** (TOFU's ``locuslab/TOFU`` configs ``forget01``/``05``/``10``,
  ``retain90``/``95``/``99`` and their ``*_perturbed`` sets, ``real_authors_perturbed``,
  ``world_facts_perturbed``; MUSE's ``muse-bench/MUSE-News`` config ``knowmem``, splits
  ``forget_qa`` and ``retain_qa``): records with ``question`` and ``answer``; TOFU's
  perturbed sets add ``paraphrased_answer``, ``perturbed_answer`` (a list) and
  ``paraphrased_question``;
* **text corpora** (WMDP's ``bio-forget-corpus.jsonl``, ``cyber-forget-corpus.jsonl`` and
  the ``cais/wmdp-corpora`` configs; MUSE's ``raw`` config, splits ``forget``, ``retain1``):
  records with ``text`` (or JSON lines that are plain strings, as the WMDP code reads its
  cyber corpora), or a ``.txt`` file read as one document (MUSE's ``raw/forget.txt``).

A source is a path (``.parquet``, ``.json`` — a JSON list or JSON lines, as TOFU's files
are —, ``.jsonl``; ``.txt`` for corpora) or ``hub:ID[:CONFIG][@SPLIT]``, read with
``datasets.load_dataset`` from the local cache only (the hub is never asked). Each source is
one topic of the benchmark, named by its config or file name.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmcompose.errors import ConfigError, DataError
from lmcompose.metrics.edits import target_text

__all__ = [
    "Document",
    "QAItem",
    "SourceSpec",
    "check_overlap",
    "load_corpus_source",
    "load_mcq_source",
    "load_qa_source",
    "parse_source",
    "qa_prompt",
]

LETTERS = ("A", "B", "C", "D")
#: the question format of TOFU's base-model families (phi, stablelm, pythia: "Question: ",
#: "\n", "Answer: "), the answer after "Answer:" with its leading space
QA_TEMPLATE = "Question: {}\nAnswer:"
#: WMDP's lm-eval description topics by config
WMDP_SUBJECTS = {"bio": "biology", "chem": "chemistry", "cyber": "cybersecurity"}
#: where each benchmark's files come from, for the message when one is missing
WHERE_TO_GET = {
    "cais/wmdp-corpora": "WMDP's corpora: hub cais/wmdp-corpora (cyber-forget-corpus, cyber-retain-corpus, "
    "bio-retain-corpus); bio-forget-corpus.jsonl only through the request form linked from "
    "github.com/centerforaisafety/wmdp",
    "cais/wmdp": "WMDP's questions: hub cais/wmdp, configs wmdp-bio, wmdp-chem, wmdp-cyber, split test",
    "cais/mmlu": "MMLU: hub cais/mmlu, e.g. config all, split test",
    "locuslab/tofu": "TOFU: hub locuslab/TOFU, configs forget01/05/10, retain90/95/99, *_perturbed, "
    "real_authors_perturbed, world_facts_perturbed (or the JSON files of github.com/locuslab/tofu)",
    "muse-bench/": "MUSE: hub muse-bench/MUSE-News or MUSE-Books, config knowmem (splits forget_qa, retain_qa) or raw "
    "(splits forget, retain1, retain2, holdout)",
}
FILE_SUFFIXES = (".parquet", ".json", ".jsonl")


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source: a local ``path``, or a hub ``hub_id`` with its ``config`` and ``split``."""

    text: str
    path: Path | None = None
    hub_id: str | None = None
    config: str | None = None
    split: str | None = None

    @property
    def topic(self) -> str:
        """The topic a source's records form: its config (and split) on the hub, its file name here."""
        if self.path is not None:
            return self.path.stem
        parts = [self.config or self.hub_id.rsplit("/", 1)[-1]] if self.hub_id else []
        return "/".join(parts + ([self.split] if self.split else []))


@dataclass(frozen=True)
class QAItem:
    """A question with its answer, asked as ``Question: ...\\nAnswer:``; TOFU's perturbed sets
    add a paraphrased answer and wrong (perturbed) answers for the truth ratio."""

    topic: str
    question: str
    answer: str
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()
    paraphrased_question: str | None = None
    source: str = ""

    @property
    def prompt(self) -> str:
        return qa_prompt(self.question)

    @property
    def sentence(self) -> str:
        """The pair as one training text (TOFU trains on question and answer, the answer's
        tokens labelled)."""
        return self.prompt + target_text(self.prompt, self.answer)


@dataclass(frozen=True)
class Document:
    """A text of a forget or retain corpus, trained on as a whole (every token labelled)."""

    topic: str
    text: str
    source: str = ""


def qa_prompt(question: str) -> str:
    return QA_TEMPLATE.format(question.strip())


def parse_source(text: str, what: str) -> SourceSpec:
    """``hub:ID[:CONFIG][@SPLIT]`` or a file's path (which must exist)."""
    raw = str(text).strip()
    if not raw:
        raise ConfigError(f"{what}: an empty source; give a file's path or hub:ID[:CONFIG][@SPLIT]")
    if raw.startswith("hub:"):
        rest, _, split = raw[4:].partition("@")
        hub_id, _, config = rest.partition(":")
        if not hub_id.strip():
            raise ConfigError(f"{what} {raw!r}: name the dataset after hub:, e.g. hub:cais/wmdp:wmdp-bio@test")
        return SourceSpec(raw, hub_id=hub_id.strip(), config=config.strip() or None, split=split.strip() or None)
    path = Path(raw).expanduser()
    if not path.exists():
        raise DataError(
            f"{what}: file {raw} does not exist; give the path of an existing file, or a cached dataset as "
            "hub:ID[:CONFIG][@SPLIT] (docs/unlearning.md, the real benchmarks' files)"
        )
    if path.is_dir():
        raise DataError(f"{what}: {raw} is a folder; give one file (.parquet, .json, .jsonl, or .txt for a corpus)")
    return SourceSpec(raw, path=path)


# -- reading records -------------------------------------------------------------------------
def _where_to_get(hub_id: str) -> str:
    low = hub_id.lower()
    for prefix, hint in WHERE_TO_GET.items():
        if low == prefix or (prefix.endswith("/") and low.startswith(prefix)):
            return hint
    return ""


@contextlib.contextmanager
def _cache_only() -> Iterator[None]:
    """``datasets`` reads its local cache and never the hub while inside (as HF_HUB_OFFLINE=1)."""
    import datasets

    before = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = before


def _hub_records(spec: SourceSpec, what: str) -> list[Any]:
    import datasets

    datasets.disable_progress_bars()
    try:
        with _cache_only():
            loaded = datasets.load_dataset(spec.hub_id, spec.config, split=spec.split)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds for a dataset not in the cache
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        hint = _where_to_get(spec.hub_id) if spec.hub_id else ""
        config = f", {spec.config!r}" if spec.config else ""
        raise DataError(
            f"{what} {spec.text}: not in the local datasets cache ({first}); it is read from the cache only. On a "
            f'machine with network, cache it with python -c "import datasets; datasets.load_dataset('
            f"'{spec.hub_id}'{config})\" (HF_DATASETS_CACHE is where it goes), or download the file and give its "
            "path" + (f". {hint}" if hint else "")
        ) from None
    if isinstance(loaded, dict):  # a DatasetDict: the split must be clear
        splits = list(loaded)
        if len(splits) != 1:
            raise ConfigError(
                f"{what} {spec.text}: the dataset has splits {', '.join(splits)}; name one, e.g. "
                f"hub:{spec.hub_id}{':' + spec.config if spec.config else ''}@{splits[0]}"
            )
        loaded = loaded[splits[0]]
    return list(loaded.to_list())


def _json_records(path: Path, what: str) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"{what} {path}: the file is empty; give a file with records")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if not exc.msg.startswith("Extra data"):
                raise DataError(f"{what} {path}: not JSON ({exc.msg}, line {exc.lineno}); fix the file") from None
        else:
            if isinstance(data, list):
                return data
            if isinstance(data, dict):  # JSON lines with one line
                return [data]
            raise DataError(
                f"{what} {path}: a JSON {type(data).__name__}, not a list of records; give a JSON list or JSON lines"
            )
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{what} {path}: line {n} is not JSON ({exc.msg}); give one JSON record per line") from None
    return records


def _file_records(path: Path, what: str, text_ok: bool) -> list[Any]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_table(path).to_pylist())
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a broken file
            raise DataError(f"{what} {path}: not a readable parquet file ({exc}); fix or re-download it") from None
    if suffix in (".json", ".jsonl"):
        return _json_records(path, what)
    if text_ok and suffix == ".txt":
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise DataError(f"{what} {path}: the file is empty; give a file with text")
        return [text]
    kinds = ", ".join(FILE_SUFFIXES + ((".txt",) if text_ok else ()))
    raise DataError(f"{what} {path}: unknown file type {suffix or '(none)'}; give a {kinds} file")


def read_records(spec: SourceSpec, what: str, text_ok: bool = False) -> list[Any]:
    records = _hub_records(spec, what) if spec.hub_id else _file_records(spec.path, what, text_ok)  # type: ignore[arg-type]
    if not records:
        raise DataError(f"{what} {spec.text}: no records; give a file or split with some")
    return records


def _fields_found(records: Sequence[Any]) -> str:
    seen: dict[str, None] = {}
    for r in records[:50]:
        if isinstance(r, dict):
            seen.update(dict.fromkeys(r))
    return ", ".join(seen) if seen else f"none (the records are {type(records[0]).__name__}s, not objects)"


def _require(records: Sequence[Any], needed: Sequence[str], spec: SourceSpec, what: str, kind: str) -> None:
    for i, r in enumerate(records):
        missing = [k for k in needed if not isinstance(r, dict) or r.get(k) is None]
        if missing:
            raise DataError(
                f"{what} {spec.text}: record {i} lacks {', '.join(missing)}: the records have fields "
                f"{_fields_found(records)}, and {kind} needs {', '.join(needed)}; give a file in that format "
                "(docs/unlearning.md, the real benchmarks' files)"
            )


def _text(value: Any, spec: SourceSpec, what: str, field: str, i: int) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool) or not str(value).strip():
        raise DataError(f"{what} {spec.text}: record {i}: {field} is {value!r}, not text; fix the record")
    return str(value)


# -- the three kinds ------------------------------------------------------------------------
def _subject(record: dict, topic: str) -> str:
    """The topic's name in WMDP's description line: a record's ``subject`` (MMLU's
    ``high_school_biology`` → "high school biology"), WMDP's names for its three configs, else
    the topic's name."""
    subject = record.get("subject")
    if isinstance(subject, str) and subject.strip():
        return subject.strip().replace("_", " ")
    words = [w for w in re.split(r"[-_/\s]+", topic.lower()) if w]
    for w in words[:2]:
        if w in WMDP_SUBJECTS:
            return WMDP_SUBJECTS[w]
    return " ".join(words) or topic


def load_mcq_source(text: str, what: str) -> tuple[str, list[dict[str, Any]]]:
    """(topic, records) of a four-way question file: each record ``question``, four
    ``choices``, ``answer`` (an index; a letter A-D is read as its index) and ``label`` (the
    description line's topic)."""
    spec = parse_source(text, what)
    records = read_records(spec, what)
    _require(records, ("question", "choices", "answer"), spec, what, "a four-way question (WMDP's format)")
    out = []
    for i, r in enumerate(records):
        question = _text(r["question"], spec, what, "question", i)
        choices = r["choices"]
        if not isinstance(choices, list | tuple) or not all(isinstance(c, str | int | float) for c in choices):
            raise DataError(f"{what} {spec.text}: record {i}: choices is {choices!r}, not a list of options; fix it")
        if len(choices) != len(LETTERS):
            raise DataError(
                f"{what} {spec.text}: record {i} ({question.strip()[:60]!r}) has {len(choices)} option(s); a four-way "
                f"question in WMDP's format needs exactly {len(LETTERS)} (A-D): drop or fix the record"
            )
        answer = r["answer"]
        if isinstance(answer, str) and answer.strip().upper() in LETTERS:
            answer = LETTERS.index(answer.strip().upper())
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(LETTERS):
            raise DataError(
                f"{what} {spec.text}: record {i}: answer is {r['answer']!r}; give the right choice's index 0-3 "
                "(or its letter A-D)"
            )
        out.append(
            {
                "question": question,
                "choices": tuple(str(c) for c in choices),
                "answer": answer,
                "label": _subject(r, spec.topic),
                "source": f"{spec.text}#{i}",
            }
        )
    return spec.topic, out


def load_qa_source(text: str, what: str) -> list[QAItem]:
    """A question-answer file's pairs (TOFU's, MUSE's knowmem), with TOFU's paraphrased and
    perturbed answers where the file has them."""
    spec = parse_source(text, what)
    records = read_records(spec, what)
    _require(records, ("question", "answer"), spec, what, "a question-answer pair (TOFU's or MUSE's format)")
    out = []
    for i, r in enumerate(records):
        perturbed = r.get("perturbed_answer")
        if perturbed is None:
            perturbed = ()
        elif isinstance(perturbed, str):
            perturbed = (perturbed,)
        elif isinstance(perturbed, list | tuple):
            perturbed = tuple(_text(p, spec, what, "perturbed_answer", i) for p in perturbed)
        else:
            raise DataError(f"{what} {spec.text}: record {i}: perturbed_answer is {perturbed!r}; give a list of texts")
        para = r.get("paraphrased_answer")
        para_q = r.get("paraphrased_question")
        out.append(
            QAItem(
                spec.topic,
                _text(r["question"], spec, what, "question", i),
                _text(r["answer"], spec, what, "answer", i),
                None if para is None else _text(para, spec, what, "paraphrased_answer", i),
                tuple(perturbed),
                None if para_q is None else _text(para_q, spec, what, "paraphrased_question", i),
                f"{spec.text}#{i}",
            )
        )
    return out


def load_corpus_source(text: str, what: str) -> list[Document]:
    """A corpus's documents: records' ``text`` (or JSON lines that are strings), or a
    ``.txt`` file as one document."""
    spec = parse_source(text, what)
    records = read_records(spec, what, text_ok=True)
    if not all(isinstance(r, str) for r in records):
        _require(records, ("text",), spec, what, "a corpus document")
    docs = []
    for i, r in enumerate(records):
        body = r if isinstance(r, str) else r["text"]
        if not isinstance(body, str):
            raise DataError(f"{what} {spec.text}: record {i}: text is {body!r}, not text; fix the record")
        if body.strip():
            docs.append(Document(spec.topic, body, f"{spec.text}#{i}"))
    if not docs:
        raise DataError(f"{what} {spec.text}: every document is empty; give a corpus with text")
    return docs


# -- forget and retain must not overlap ---------------------------------------------------------
def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def check_overlap(forget: Sequence[tuple[str, str]], retain: Sequence[tuple[str, str]], kind: str) -> None:
    """Forget and retain sets that share an item (``(text, source)`` pairs compared without
    case or spacing) would both forget and keep it: one DataError naming the first shared
    item, how many there are and where each comes from."""
    seen = {_norm(t): src for t, src in forget}
    shared = [(t, seen[_norm(t)], src) for t, src in retain if _norm(t) in seen]
    if shared:
        text, f_src, r_src = shared[0]
        raise DataError(
            f"forget and retain sets overlap: {len(shared)} {kind}(s) are in both, e.g. {text.strip()[:80]!r} "
            f"({f_src.rsplit('#', 1)[0]} and {r_src.rsplit('#', 1)[0]}); remove them from the retain file"
        )
