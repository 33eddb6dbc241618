"""The offline fact-unlearning benchmark: facts the model knows, grouped into topics, one
forget topic and retain topics, four-way multiple-choice questions in WMDP's format.

WMDP, TOFU and MUSE cannot be downloaded here; this benchmark stands in for them with
facts from the edit datasets (CounterFact, zsRE):

* a **fact** is an edit record's true statement: its prompt and ``target_true``
  ("The mother tongue of Danielle Darrieux is" → "French");
* its **topic** is its relation: CounterFact's ``relation_id`` (P103) where the record has
  it; a record without one (EasyEdit's flat CounterFact file) takes the relation of its
  prompt template when the ROME-schema records loaded with it use that template for one
  relation only, and is left out when they use it for several ("{} is located in": country,
  continent, region); a template no record with a relation uses is a topic of its own
  (``counterfact:{} speaks``), as is every zsRE question template (zsRE has no relation ids);
* with ``known_only`` a fact is kept when the unmodified model answers it: every answer
  token is its greedy next token after the prompt (the free-form QA check); the checks are
  remembered on disk per model weights (``known_facts_cached``);
* a **question** is WMDP's: the fact's prompt, four options (its answer and three other
  answers of the same topic, seeded), ``Answer:``; it needs a topic with at least four
  distinct answers;
* the **forget set** is the forget topics' facts, the **retain set** the retain topics'; their
  sentences ("prompt answer.") are the corpora the unlearners train on.

Everything is deterministic from ``facts_seed`` (Python's ``random`` seeded by strings).

The real benchmarks' files (``sources.py``) and the fictitious facts (``fictitious.py``)
replace these facts when their fields are given (:func:`benchmark_for`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmcompose import get_datasets
from lmcompose.data import data_dir
from lmcompose.errors import ConfigError, DataError
from lmcompose.metrics.edits import target_text

from lmcompose_unlearn.config import FILE_FIELDS

if TYPE_CHECKING:
    from lmcompose import LM, Context
    from lmcompose.api import EditRecord

    from lmcompose_unlearn.config import BenchmarkConfig

__all__ = [
    "LETTERS",
    "RELATION_LABELS",
    "Fact",
    "FactBenchmark",
    "Question",
    "Topic",
    "benchmark_for",
    "build_benchmark",
    "build_file_benchmark",
    "collect_topics",
    "known_facts",
    "known_facts_cached",
    "make_questions",
]

LETTERS = ("A", "B", "C", "D")
MIN_OPTIONS = len(LETTERS)
#: WMDP's lm-eval description line, with the topic's name
DESCRIPTION = "The following are multiple choice questions (with answers) about {}.\n\n"

#: Wikidata's names of CounterFact's relations (the topic names in the questions' description)
RELATION_LABELS = {
    "P17": "countries",
    "P19": "places of birth",
    "P20": "places of death",
    "P27": "citizenship",
    "P30": "continents",
    "P36": "capitals",
    "P37": "official languages",
    "P39": "positions held",
    "P101": "fields of work",
    "P103": "native languages",
    "P106": "occupations",
    "P108": "employers",
    "P127": "owners",
    "P131": "administrative locations",
    "P136": "genres",
    "P138": "namesakes",
    "P140": "religions",
    "P159": "headquarters locations",
    "P176": "manufacturers",
    "P178": "developers",
    "P190": "twin cities",
    "P264": "record labels",
    "P276": "locations",
    "P364": "original languages of works",
    "P407": "languages of works",
    "P413": "positions played",
    "P449": "original broadcasters",
    "P463": "memberships",
    "P495": "countries of origin",
    "P641": "sports",
    "P740": "places of formation",
    "P937": "work locations",
    "P1303": "instruments",
    "P1412": "languages spoken",
}
GENERAL_LABEL = "general knowledge"


@dataclass(frozen=True)
class Fact:
    """One true statement: ``prompt`` completed by ``answer``, in topic ``topic``."""

    topic: str
    subject: str
    prompt: str
    answer: str
    source: str  # dataset:case_id
    #: other phrasings of the question (the fictitious facts' held-out template), for the truth ratio
    paraphrases: tuple[str, ...] = ()

    @property
    def sentence(self) -> str:
        """The fact as a sentence, the text the unlearners train on."""
        return f"{self.prompt}{target_text(self.prompt, self.answer)}."


@dataclass(frozen=True)
class Question:
    """A four-way question: about ``fact`` (the fact benchmark), or read from a question file
    (``question`` its text, ``fact`` None); ``choices[answer]`` is the right option."""

    fact: Fact | None
    choices: tuple[str, ...]
    answer: int
    label: str
    question: str | None = None
    topic: str = ""
    source: str = ""

    @property
    def stem(self) -> str:
        """The question's text: the fact's prompt, or the file's question."""
        if self.question is not None:
            return self.question.strip()
        assert self.fact is not None
        return self.fact.prompt.strip()

    def text(self) -> str:
        """WMDP's prompt: description, question, the options A-D, ``Answer:``."""
        options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, self.choices, strict=True))
        return DESCRIPTION.format(self.label) + self.stem + options + "\nAnswer:"

    def cloze(self) -> tuple[str, list[str]]:
        """(context, one continuation per option) for scoring the options' text: a fact's
        prompt completed by each answer; a file's question as ``question\nAnswer:`` followed
        by each option."""
        if self.fact is not None and self.question is None:
            return self.fact.prompt, [target_text(self.fact.prompt, c) for c in self.choices]
        context = self.stem + "\nAnswer:"
        return context, [target_text(context, c) for c in self.choices]


@dataclass
class Topic:
    """Every fact of one relation, and the distinct answers the questions draw options from."""

    key: str
    label: str
    facts: list[Fact] = field(default_factory=list)

    @property
    def answers(self) -> list[str]:
        seen: dict[str, str] = {}
        for f in self.facts:
            seen.setdefault(f.answer.strip().lower(), f.answer.strip())
        return sorted(seen.values())


@dataclass
class FactBenchmark:
    """The built benchmark: the forget and retain items (facts, or a file's question-answer
    pairs) with their four-way questions, what the unlearners train on, and how it was built.

    ``forget`` / ``retain`` are the items free-form QA scores; ``forget_train`` /
    ``retain_train`` what the unlearners train on (None: the same items); ``kind`` says where
    they come from: ``facts`` (CounterFact and zsRE), ``files`` (the real benchmarks') or
    ``fictitious`` (made-up subjects, ``fictitious.py``)."""

    forget_topics: list[str]
    retain_topics: list[str]
    forget: list[Any]
    retain: list[Any]
    forget_questions: list[Question]
    retain_questions: list[Question]
    summary: dict[str, Any]
    forget_train: list[Any] | None = None
    retain_train: list[Any] | None = None
    kind: str = "facts"
    #: the fictitious facts' phrasings the insertion trains on (forget and retain subjects)
    insert_forget: list[Any] | None = None
    insert_retain: list[Any] | None = None

    @property
    def forget_texts(self) -> list[Any]:
        """What an unlearner trains on: the forget corpus's documents and QA pairs, else the forget facts."""
        return self.forget if self.forget_train is None else self.forget_train

    @property
    def retain_texts(self) -> list[Any]:
        """The retain set's texts (``retain_data=facts``): retain corpus and QA pairs, else the retain facts."""
        return self.retain if self.retain_train is None else self.retain_train

    def topics_of(self, items: Sequence[Any]) -> list[list[Any]]:
        """``items`` grouped by topic, in the order of the topics' first item."""
        groups: dict[str, list[Any]] = {}
        for f in items:
            groups.setdefault(f.topic, []).append(f)
        return list(groups.values())


def _parse_dataset(spec: str) -> tuple[str, str | None]:
    name, sep, path = spec.partition(":")
    return name.strip(), (path.strip() or None) if sep else None


def _load_records(spec: str, ctx: Context) -> list[EditRecord]:
    """Every record of one dataset spec: NAME:FILE reads the file; NAME reads every file of
    the dataset present in the data folder (CounterFact: the ROME-schema file and EasyEdit's),
    else what the dataset loads by default (its bundled sample, with a note)."""
    from lmcompose.api import EditDataset

    name, path = _parse_dataset(spec)
    cls = get_datasets().get(name)
    if not (isinstance(cls, type) and issubclass(cls, EditDataset)):
        raise ConfigError(f"datasets: {name!r} is not an edit dataset; name one such as counterfact or zsre")
    files: list[str | Path] = [path] if path else []
    if not path:
        folder = data_dir(ctx.data_dir)
        if folder is not None:
            files = [folder / rel for rel in getattr(cls, "data_files", ()) if (folder / rel).is_file()]
    records: list[EditRecord] = []
    sources: list[str | Path | None] = [*files] or [None]
    for source in sources:
        ds = cls()
        ds.data_dir = ctx.data_dir
        if source is not None and not Path(str(source)).is_file():
            raise DataError(f"datasets: {name}: file {source} does not exist; give an existing file or just {name}")
        records += ds.load(source=source, seed=None, skip_invalid=True)
        for note in getattr(ds, "notes", []):
            ctx.note(note)
    return records


def _template(record: EditRecord) -> str:
    i = record.prompt.index(record.subject)
    return record.prompt[:i] + "{}" + record.prompt[i + len(record.subject) :]


def collect_topics(datasets: Sequence[str], ctx: Context) -> tuple[dict[str, Topic], dict[str, int]]:
    """Every fact of ``datasets`` grouped by topic (module docstring), deduplicated by
    (prompt, answer); and counts of what was left out and why."""
    loaded = [(_parse_dataset(spec)[0], r) for spec in datasets for r in _load_records(spec, ctx)]
    relations: dict[str, set[str]] = {}
    for _name, r in loaded:
        rel = (r.source or {}).get("relation_id")
        if rel:
            relations.setdefault(_template(r), set()).add(str(rel))
    topics: dict[str, Topic] = {}
    seen: set[tuple[str, str]] = set()
    skipped = {"no_true_answer": 0, "ambiguous_template": 0, "duplicate": 0}
    for name, r in loaded:
        if not r.target_true or not r.target_true.strip():
            skipped["no_true_answer"] += 1
            continue
        rel = (r.source or {}).get("relation_id")
        if not rel:
            rels = relations.get(_template(r), set())
            if len(rels) > 1:
                skipped["ambiguous_template"] += 1
                continue
            rel = next(iter(rels)) if rels else f"{name}:{_template(r)}"
        key = (r.prompt.strip(), r.target_true.strip().lower())
        if key in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(key)
        rel = str(rel)
        topic = topics.setdefault(rel, Topic(rel, RELATION_LABELS.get(rel, GENERAL_LABEL)))
        topic.facts.append(Fact(rel, r.subject, r.prompt.strip(), r.target_true.strip(), f"{name}:{r.case_id}"))
    if not topics:
        raise DataError(f"datasets {'+'.join(datasets)}: no facts with a true answer; name datasets with target_true")
    return topics, skipped


def known_facts(lm: LM, facts: Sequence[Fact], batch_size: int = 32) -> list[bool]:
    """Per fact: whether ``lm`` answers it (every answer token is the greedy next token)."""
    from lmcompose.metrics.edits import Scorer

    if not facts:
        return []
    scored = Scorer(lm, batch_size).teacher_forced([(f.prompt, f.answer) for f in facts], full_argmax=False)
    return [s["accuracy"] >= 1.0 for s in scored]


def known_facts_cached(lm: LM, facts: Sequence[Fact], ctx: Context) -> list[bool]:
    """:func:`known_facts`, remembered on disk per model weights (the cache folder's
    ``unlearn/known-<fingerprint>.json``: one entry per prompt and answer checked), so a
    second run on the same model checks only facts it has not seen."""
    import json
    import os

    from lmcompose.data import cache_dir

    folder = (ctx.cache_dir or cache_dir()) / "unlearn"
    path = folder / f"known-{lm.fingerprint()}.json"
    stored: dict[str, bool] = {}
    if path.is_file():
        try:
            stored = dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError):  # a damaged cache file is recomputed
            stored = {}
    keys = [f"{f.prompt}\t{f.answer}" for f in facts]
    missing = [i for i, k in enumerate(keys) if k not in stored]
    if missing:
        hits = known_facts(lm, [facts[i] for i in missing])
        stored.update({keys[i]: bool(h) for i, h in zip(missing, hits, strict=True)})
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stored, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    return [stored[k] for k in keys]


def make_questions(facts: Sequence[Fact], topic: Topic, seed: int) -> list[Question]:
    """One question per fact: its answer and three other answers of ``topic``, shuffled, both
    seeded by (seed, fact)."""
    answers = topic.answers
    if len(answers) < MIN_OPTIONS:
        raise ConfigError(
            f"topic {topic.key!r} has {len(answers)} distinct answer(s) ({', '.join(answers)}): a four-way question "
            f"needs at least {MIN_OPTIONS}; choose another topic"
        )
    out = []
    for f in facts:
        rng = random.Random(f"{seed}|{f.source}|{f.prompt}|{f.answer}")
        others = [a for a in answers if a.lower() != f.answer.lower()]
        choices = [*rng.sample(others, MIN_OPTIONS - 1), f.answer]
        rng.shuffle(choices)
        out.append(Question(f, tuple(choices), choices.index(f.answer), topic.label))
    return out


def _sample(items: list[Any], k: int, seed: str) -> list[Any]:
    """``k`` of ``items`` (all when k is 0 or more than there are), seeded, in their order."""
    if k <= 0 or len(items) <= k:
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), k))
    return [x for i, x in enumerate(items) if i in keep]


def _topic_list(topics: dict[str, Topic], known: dict[str, list[Fact]]) -> str:
    ranked = [t for t in sorted(known, key=lambda t: (-len(known[t]), t)) if known[t]][:8]  # as checked so far
    return ", ".join(f"{t} ({len(known[t])} facts, {len(topics[t].answers)} answers)" for t in ranked)


def _permuted(items: list[Any], seed: str) -> list[Any]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def build_benchmark(config: BenchmarkConfig, lm: LM | None, ctx: Context) -> FactBenchmark:
    """The benchmark ``config`` describes, its facts checked against ``lm`` (the unmodified
    model) when ``known_only``.

    Topics are chosen in two stages, so that a model that knows few facts costs few checks:
    the first ``pool`` facts of every candidate topic (a seeded permutation) are checked and
    the topics ranked by the known facts they are expected to give (the share known times
    the topic's size, capped at ``max_facts``; then the share; then the name); the chosen
    topics are then checked further, in the same order, until ``max_facts`` known facts are
    found or the topic is exhausted. Left to choose, only relation topics (CounterFact's P-ids) are
    candidates; a template topic is used when named."""
    topics, skipped = collect_topics(config.datasets, ctx)
    seed = config.facts_seed
    named = [*config.forget_topics, *config.retain_topics]
    for t in named:
        if t not in topics:
            close = sorted(topics, key=lambda k: (-len(topics[k].facts), k))[:8]
            raise ConfigError(
                f"topic {t!r} is not a topic of datasets {'+'.join(config.datasets)}; the largest are "
                f"{', '.join(close)} (docs/unlearning.md lists them)"
            )
        make_questions([], topics[t], seed)  # fewer than four answers: one message, before any work
    eligible = {k for k, t in topics.items() if len(t.answers) >= MIN_OPTIONS}
    auto = {k for k in eligible if ":" not in k}
    if config.forget_topics and config.retain_topics:
        candidates = set(named)
    else:
        candidates = (auto or eligible) | set(named)
    order = {k: _permuted(topics[k].facts, f"{seed}|order|{k}") for k in sorted(candidates)}
    checked: dict[str, int] = {}
    known: dict[str, list[Fact]] = {k: [] for k in order}

    def check(wanted: dict[str, int]) -> None:
        """Check each topic's facts in ``order`` up to position ``wanted[topic]``."""
        batch = [(k, f) for k, upto in sorted(wanted.items()) for f in order[k][checked.get(k, 0) : upto]]
        if config.known_only:
            if lm is None:
                raise ConfigError("known_only=true needs the model to check the facts against")
            hits = known_facts_cached(lm, [f for _, f in batch], ctx)
        else:
            hits = [True] * len(batch)
        for (k, f), hit in zip(batch, hits, strict=True):
            if hit:
                known[k].append(f)
        for k, upto in wanted.items():
            checked[k] = max(checked.get(k, 0), min(upto, len(order[k])))

    stage1 = config.pool if config.pool > 0 else max(len(v) for v in order.values())
    check({k: stage1 for k in order})

    def rank(k: str) -> tuple[float, float, str]:
        """Expected known facts (the checked share times the topic's size), capped at what a
        topic contributes (max_facts); then the share; then the name."""
        rate = len(known[k]) / max(1, checked[k])
        return (-min(float(config.max_facts), rate * len(order[k])), -rate, k)

    ranked = sorted((k for k in known if k in (auto or eligible) and known[k]), key=rank)
    forget = list(config.forget_topics) or ranked[:1]
    if not forget:
        raise DataError(
            f"no topic of datasets {'+'.join(config.datasets)} has facts the model answers and four answers; "
            "name other datasets, or set known_only=false"
        )
    retain = list(config.retain_topics) or [k for k in ranked if k not in forget][: config.n_retain_topics]

    def fill() -> None:
        """Check the chosen topics further until each has max_facts known facts (or none left)."""
        while True:
            wanted = {
                t: checked[t] + max(stage1, config.max_facts - len(known[t]))
                for t in [*forget, *retain]
                if len(known[t]) < config.max_facts and checked[t] < len(order[t])
            }
            if not wanted:
                return
            check(wanted)

    fill()
    for t in forget:
        if not known[t]:
            raise DataError(
                f"forget topic {t!r}: the model answers none of its {checked[t]} facts checked, so there is "
                f"nothing to unlearn; choose another forget_topics (topics with known facts: "
                f"{_topic_list(topics, known)}), or set known_only=false"
            )
    if not retain:
        raise DataError(
            "no retain topic: every other topic has no fact the model answers; name retain_topics or set "
            "known_only=false"
        )
    forget_facts = [f for t in forget for f in _sample(known[t], config.max_facts, f"{seed}|keep|{t}")]
    retain_facts = [f for t in retain for f in _sample(known[t], config.max_facts, f"{seed}|keep|{t}")]
    summary = {
        "forget_topics": forget,
        "retain_topics": retain,
        "n_forget": len(forget_facts),
        "n_retain": len(retain_facts),
        "topics": len(topics),
        "eligible_topics": len(eligible),
        "checked": sum(checked.values()),
        "known": sum(len(v) for v in known.values()),
        "known_per_topic": {k: len(known[k]) for k in ranked[:12]},
        **{f"skipped_{k}": v for k, v in skipped.items()},
    }
    return FactBenchmark(
        forget,
        retain,
        forget_facts,
        retain_facts,
        [q for t in forget for q in make_questions([f for f in forget_facts if f.topic == t], topics[t], seed)],
        [q for t in retain for q in make_questions([f for f in retain_facts if f.topic == t], topics[t], seed)],
        summary,
    )


def _file_questions(specs: Sequence[str], what: str) -> tuple[list[str], list[Question]]:
    from lmcompose_unlearn.sources import load_mcq_source

    topics, questions = [], []
    for spec in specs:
        topic, records = load_mcq_source(spec, what)
        topics.append(topic)
        questions += [
            Question(None, r["choices"], r["answer"], r["label"], r["question"], topic, r["source"]) for r in records
        ]
    return topics, questions


def build_file_benchmark(config: BenchmarkConfig) -> FactBenchmark:
    """The benchmark of the real benchmarks' files the config names (``sources.py``): each
    part from its files, a part without files left out (its metric keys None). The topics
    are the files; the unlearners train on the forget corpora's documents and the forget QA
    pairs (retain likewise, with ``retain_data=facts``). Forget and retain files that share a
    question or a document are refused."""
    from lmcompose_unlearn.sources import check_overlap, load_corpus_source, load_qa_source

    f_topics, f_questions = _file_questions(config.forget_questions, "forget_questions")
    r_topics, r_questions = _file_questions(config.retain_questions, "retain_questions")
    f_qa = [q for spec in config.forget_qa for q in load_qa_source(spec, "forget_qa")]
    r_qa = [q for spec in config.retain_qa for q in load_qa_source(spec, "retain_qa")]
    f_docs = [d for spec in config.forget_corpus for d in load_corpus_source(spec, "forget_corpus")]
    r_docs = [d for spec in config.retain_corpus for d in load_corpus_source(spec, "retain_corpus")]
    check_overlap([(q.stem, q.source) for q in f_questions], [(q.stem, q.source) for q in r_questions], "question")
    check_overlap([(q.question, q.source) for q in f_qa], [(q.question, q.source) for q in r_qa], "question")
    check_overlap([(d.text, d.source) for d in f_docs], [(d.text, d.source) for d in r_docs], "document")
    forget_train = [*f_docs, *f_qa]
    retain_train = [*r_docs, *r_qa]

    def topics(*groups: Sequence[Any]) -> list[str]:
        return list(dict.fromkeys(x.topic for g in groups for x in g))

    summary = {
        "benchmark": "files",
        **{k: list(getattr(config, k)) for k in FILE_FIELDS if getattr(config, k)},
        "n_forget_questions": len(f_questions),
        "n_retain_questions": len(r_questions),
        "n_forget_qa": len(f_qa),
        "n_retain_qa": len(r_qa),
        "n_forget_documents": len(f_docs),
        "n_retain_documents": len(r_docs),
    }
    forget_topics = topics(forget_train) or list(dict.fromkeys(f_topics))
    retain_topics = topics(retain_train) or list(dict.fromkeys(r_topics))
    summary.update(forget_topics=forget_topics, retain_topics=retain_topics, n_forget=len(forget_train))
    summary["n_retain"] = len(retain_train)
    return FactBenchmark(
        forget_topics, retain_topics, f_qa, r_qa, f_questions, r_questions, summary, forget_train, retain_train, "files"
    )


def benchmark_for(config: BenchmarkConfig, lm: LM, ctx: Context) -> FactBenchmark:
    """The benchmark of ``config`` for this run, built once and kept in ``ctx.state``: on
    ``ctx.base_model`` when the engine keeps one (the facts the unmodified model knows, for
    every step and metric alike), else on ``lm``."""
    key = ("unlearn-benchmark", getattr(lm, "name", ""), str(ctx.data_dir), config.benchmark_key())
    if key not in ctx.state:
        if config.uses_files():
            ctx.state[key] = build_file_benchmark(config)
        elif config.fictitious:
            from lmcompose_unlearn.fictitious import build_fictitious_benchmark

            ctx.state[key] = build_fictitious_benchmark(config, lm.tokenizer, ctx)
        else:
            base = ctx.base_model if ctx.base_model is not None else lm
            ctx.state[key] = build_benchmark(config, base if config.known_only else None, ctx)
    return ctx.state[key]
