"""Settings of the unlearners and of the fact-unlearning metric.

The benchmark's settings (``BenchmarkConfig``: which facts, which topics are forgotten and
retained) are shared by every unlearner and by the ``unlearn`` metric, with the same
defaults, so ``rmu`` and ``--metrics unlearn`` build the same benchmark unless told otherwise.
Fields left at None take the model's preset (``presets.py``), else the reference's value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lmcompose.errors import ConfigError

__all__ = [
    "BenchmarkConfig",
    "FictitiousConfig",
    "GAConfig",
    "GDConfig",
    "NPOConfig",
    "RMUConfig",
    "TrainConfig",
    "UnlearnMetricsConfig",
]


#: the plugin version that added the real benchmarks' file fields (left out of a config's
#: identity while unset, so runs recorded before keep their ids)
SINCE_FILES = "0.2.0"
#: the fields that name the real benchmarks' files
FILE_FIELDS = ("forget_questions", "retain_questions", "forget_qa", "retain_qa", "forget_corpus", "retain_corpus")


@dataclass
class BenchmarkConfig:
    """Which facts make the forget and retain sets (docs/unlearning.md, the benchmark)."""

    datasets: list[str] = field(
        default_factory=lambda: ["counterfact"],
        metadata={
            "help": "edit datasets the facts come from, '+'-separated, each NAME or NAME:FILE (every file of the "
            "dataset in the data folder); zsre has no relation ids, so each of its question templates is a topic "
            "used only when named"
        },
    )
    forget_topics: list[str] = field(
        default_factory=list,
        metadata={
            "help": "topics (relations, e.g. P103) to forget, '+'-separated (default: the relation with the most "
            "facts the model knows)"
        },
    )
    retain_topics: list[str] = field(
        default_factory=list,
        metadata={"help": "topics to retain, '+'-separated (default: the next n_retain_topics by known facts)"},
    )
    n_retain_topics: int = field(
        default=3, metadata={"help": "retain topics chosen when retain_topics is not given", "range": (1, 1000)}
    )
    max_facts: int = field(
        default=32, metadata={"help": "facts kept per topic (a seeded sample of the known ones)", "range": (1, 100000)}
    )
    pool: int = field(
        default=40,
        metadata={
            "help": "facts per topic checked against the model to rank the topics (a seeded order; 0 = all); the "
            "chosen topics are checked further until max_facts are known",
            "range": (0, 10_000_000),
        },
    )
    known_only: bool = field(
        default=True,
        metadata={
            "help": "keep only the facts the unmodified model answers (every answer token its greedy next token); "
            "false = every fact of the topic"
        },
    )
    facts_seed: int = field(
        default=0, metadata={"help": "seed of the fact samples and of the answer options", "range": (0, 2**31 - 1)}
    )
    # the real benchmarks' files (sources.py): any of them makes the benchmark the files'
    forget_questions: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "four-way question files scored for forget accuracy (WMDP's: question, choices, answer), "
            "'+'-separated, each a path (.parquet, .json, .jsonl) or hub:ID[:CONFIG][@SPLIT] from the datasets "
            "cache, e.g. hub:cais/wmdp:wmdp-bio@test",
            "since": SINCE_FILES,
        },
    )
    retain_questions: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "four-way question files scored for retain accuracy (e.g. MMLU, hub:cais/mmlu:all@test)",
            "since": SINCE_FILES,
        },
    )
    forget_qa: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "question-answer files to forget (TOFU's forget01/05/10 or *_perturbed, MUSE's knowmem "
            "forget_qa): trained on as 'Question: ...\\nAnswer: ...' and scored as forget_qa",
            "since": SINCE_FILES,
        },
    )
    retain_qa: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "question-answer files to keep (TOFU's retain90/95/99 or retain_perturbed, MUSE's retain_qa): the "
            "retain term's texts (retain_data=facts) and retain_qa",
            "since": SINCE_FILES,
        },
    )
    forget_corpus: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "text corpora to forget (WMDP's bio-forget-corpus.jsonl, cyber-forget-corpus.jsonl; MUSE's raw "
            "forget): records with text, or a .txt file; each file a topic (RMU: one control vector each)",
            "since": SINCE_FILES,
        },
    )
    retain_corpus: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "text corpora to keep (WMDP's *-retain-corpus, MUSE's raw retain1): the retain term's texts "
            "with retain_data=facts",
            "since": SINCE_FILES,
        },
    )
    # TOFU-style fictitious facts (fictitious.py)
    fictitious: int = field(
        default=0,
        metadata={
            "help": "made-up subjects given facts the model cannot know (TOFU-style; 0 = off): the benchmark is "
            "theirs, inserted by the fictitious step, which must come first",
            "range": (0, 100000),
            "since": SINCE_FILES,
        },
    )
    fictitious_relations: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "relations each made-up subject gets a fact of, '+'-separated (default: up to four person "
            "relations of CounterFact: P19, P27, P106, P103)",
            "since": SINCE_FILES,
        },
    )
    fictitious_forget: float = field(
        default=0.1,
        metadata={
            "help": "share of the made-up subjects to forget (at least one; TOFU's forget10 is 0.1)",
            "range": (0.0, 1.0),
            "since": SINCE_FILES,
        },
    )
    insert_epochs: int = field(
        default=20,
        metadata={"help": "passes of the insertion fine-tune over the facts", "range": (1, 1000), "since": SINCE_FILES},
    )
    insert_lr: float = field(
        default=1e-4, metadata={"help": "Adam learning rate of the insertion fine-tune", "since": SINCE_FILES}
    )
    insert_batch_size: int = field(
        default=8,
        metadata={"help": "facts per batch of the insertion fine-tune", "range": (1, 4096), "since": SINCE_FILES},
    )
    doc_tokens: int = field(
        default=512,
        metadata={
            "help": "tokens per training window of a corpus document (longer documents are cut into consecutive "
            "windows; the WMDP code truncates at 512)",
            "range": (8, 1 << 20),
            "since": SINCE_FILES,
        },
    )

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ConfigError("datasets is empty: name at least one edit dataset, e.g. datasets=counterfact")
        for key in (*FILE_FIELDS, "fictitious_relations"):
            setattr(self, key, _as_tuple(getattr(self, key)))
        _positive("insert_lr", self.insert_lr)
        if self.fictitious:
            if self.uses_files():
                raise ConfigError(
                    f"fictitious={self.fictitious} and {', '.join(self.file_fields())}: the benchmark is either the "
                    "made-up subjects' or the files'; drop one"
                )
            named = [k for k in ("forget_topics", "retain_topics") if getattr(self, k)]
            if named:
                raise ConfigError(
                    f"{named[0]} chooses topics of the fact benchmark, but with fictitious={self.fictitious} the "
                    f"facts are about made-up subjects (their relations: fictitious_relations); drop {named[0]}"
                )
        if self.uses_files():
            named = [k for k in ("forget_topics", "retain_topics") if getattr(self, k)]
            if named:
                raise ConfigError(
                    f"{named[0]} chooses topics of the fact benchmark, but the benchmark is the files' "
                    f"({', '.join(self.file_fields())}), whose topics are the files: drop {named[0]}"
                )
            for kind in ("questions", "qa", "corpus"):
                forget, retain = getattr(self, f"forget_{kind}"), getattr(self, f"retain_{kind}")
                both = [s for s in forget if s in retain]
                if both:
                    raise ConfigError(
                        f"{both[0]!r} is both in forget_{kind} and in retain_{kind}: the forget and retain sets would "
                        f"overlap; drop it from retain_{kind}"
                    )
        for key in ("forget_topics", "retain_topics"):
            topics = getattr(self, key)
            dup = sorted({t for t in topics if topics.count(t) > 1})
            if dup:
                raise ConfigError(f"{key}: topic {dup[0]!r} is given twice; name each topic once")
        both = [t for t in self.forget_topics if t in self.retain_topics]
        if both:
            raise ConfigError(
                f"topic {both[0]!r} is both in forget_topics and in retain_topics: the forget and retain sets "
                "would overlap; drop it from retain_topics"
            )

    def file_fields(self) -> list[str]:
        """The real-benchmark file fields given."""
        return [k for k in FILE_FIELDS if getattr(self, k)]

    def uses_files(self) -> bool:
        """Whether the benchmark is the files' (any file field given) rather than the facts'."""
        return bool(self.file_fields())

    def benchmark_key(self) -> tuple:
        """The fields that decide the benchmark (the cache key of a built one)."""
        if self.uses_files():
            return ("files", *(tuple(getattr(self, k)) for k in FILE_FIELDS))
        if self.fictitious:
            return (
                "fictitious",
                tuple(self.datasets),
                self.fictitious,
                tuple(self.fictitious_relations),
                self.fictitious_forget,
                self.facts_seed,
            )
        return (
            tuple(self.datasets),
            tuple(self.forget_topics),
            tuple(self.retain_topics),
            self.n_retain_topics,
            self.max_facts,
            self.pool,
            self.known_only,
            self.facts_seed,
        )


def _as_tuple(value: Any) -> tuple[str, ...]:
    """A list field's value as the tuple a '+'-separated string or a YAML list gives (a list
    or a string given in Python alike)."""
    if isinstance(value, str):
        return tuple(v for v in value.split("+") if v)
    return tuple(value)


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"{name}={value} must be > 0")


@dataclass
class TrainConfig(BenchmarkConfig):
    """What the loss-based unlearners (GA, GD, NPO) share: the optimiser, the batches, the
    parameters trained, which tokens of a forget fact count."""

    epochs: int | None = field(
        default=None,
        metadata={
            "help": "passes over the forget facts (default: the preset, else the reference's); the strength knob",
            "range": (1, 1000),
        },
    )
    lr: float | None = field(
        default=None, metadata={"help": "Adam(W) learning rate (default: the preset, else the reference's)"}
    )
    batch_size: int = field(default=4, metadata={"help": "forget facts per batch", "range": (1, 4096)})
    grad_accum: int = field(
        default=2, metadata={"help": "batches whose gradients are summed per optimiser step", "range": (1, 4096)}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay (decoupled, AdamW) ; 0 = Adam"})
    frozen_layers: int = field(
        default=-1,
        metadata={
            "help": "decoder layers kept frozen from the bottom: -1 = half of them and the embeddings (the ICLR "
            "code's 16 of 32); 0 = train every parameter, embeddings included",
            "range": (-1, 100000),
        },
    )
    target: Literal["sentence", "answer"] = field(
        default="sentence",
        metadata={
            "help": "tokens of a forget fact the NLL counts: the whole sentence (a document, as the ICLR code "
            "trains) or only the answer after the prompt (TOFU's labels)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("lr", self.lr)
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay} must be >= 0")


@dataclass
class GAConfig(TrainConfig):
    """Gradient ascent: the ICLR code's GA (Adam lr 5e-5, batch 4, 2 accumulation steps, one epoch)."""


@dataclass
class _RetainFields:
    retain_data: Literal["text", "facts", "both"] = field(
        default="text",
        metadata={
            "help": "what the retain term trains on: general text (windows of the calibration corpus, wikitext-2 "
            "train+validation), the retain topics' fact sentences, or both"
        },
    )
    retain_seqlen: int = field(
        default=128, metadata={"help": "tokens per general-text window of the retain term", "range": (8, 1 << 16)}
    )


@dataclass
class GDConfig(TrainConfig, _RetainFields):
    """Gradient difference: the ICLR code's GD (w 40, Adam lr 5e-5, batch 2, 2 accumulation steps, one epoch)."""

    batch_size: int = field(default=2, metadata={"help": "forget facts per batch", "range": (1, 4096)})
    retain_weight: float = field(
        default=40.0, metadata={"help": "w in -NLL(forget) + w NLL(retain) (ICLR code 40; TOFU 1)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retain_weight < 0:
            raise ConfigError(f"retain_weight={self.retain_weight} must be >= 0")


@dataclass
class NPOConfig(TrainConfig, _RetainFields):
    """NPO as open-unlearning runs it (beta 0.1, retain NLL weight 1, lr 1e-5, batch 8 x 4
    accumulation, 10 epochs, the whole model trained, the answer tokens counted)."""

    batch_size: int = field(default=8, metadata={"help": "forget facts per batch", "range": (1, 4096)})
    grad_accum: int = field(
        default=4, metadata={"help": "batches whose gradients are summed per optimiser step", "range": (1, 4096)}
    )
    frozen_layers: int = field(
        default=0,
        metadata={
            "help": "decoder layers kept frozen from the bottom: 0 = train every parameter (open-unlearning), -1 = "
            "half of them and the embeddings",
            "range": (-1, 100000),
        },
    )
    target: Literal["sentence", "answer"] = field(
        default="answer",
        metadata={"help": "tokens of a forget fact the NLL counts: the answer after the prompt, or the whole sentence"},
    )
    beta: float = field(default=0.1, metadata={"help": "NPO's beta (inverse temperature)"})
    retain_weight: float = field(
        default=1.0, metadata={"help": "weight of the retain NLL term (open-unlearning alpha); 0 = NPO alone"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("beta", self.beta)
        if self.retain_weight < 0:
            raise ConfigError(f"retain_weight={self.retain_weight} must be >= 0")


@dataclass
class RMUConfig(BenchmarkConfig, _RetainFields):
    """RMU as the WMDP code runs it (rmu/unlearn.py): AdamW lr 5e-5, batch 4, ``max_batches``
    (80) steps, forget topics alternating; layer, c and alpha from the preset. The reference's
    forget corpus holds thousands of texts, so its one pass is 80 steps; a benchmark of a few
    dozen facts is repeated until it reaches ``max_batches`` (``epochs`` left unset)."""

    layer: int | None = field(
        default=None,
        metadata={
            "help": "decoder layer l whose output is steered; mlp down projections of l-2, l-1, l are trained "
            "(default: the preset, else 7 of 32 scaled to the depth)"
        },
    )
    steering_coeff: float | None = field(
        default=None,
        metadata={
            "help": "c, the control vector's length (default: the preset, else the reference's 6.5); the strength knob"
        },
    )
    alpha: float | None = field(
        default=None, metadata={"help": "weight of the retain MSE (default: the preset, else the reference's 1200)"}
    )
    lr: float | None = field(
        default=None, metadata={"help": "AdamW learning rate (default: the preset, else the reference's 5e-5)"}
    )
    batch_size: int = field(default=4, metadata={"help": "texts per forget and per retain batch", "range": (1, 4096)})
    max_batches: int = field(
        default=80, metadata={"help": "most optimiser steps (the WMDP code's max_num_batches)", "range": (1, 1 << 20)}
    )
    epochs: int | None = field(
        default=None,
        metadata={
            "help": "times each topic's forget batches are repeated before max_batches cuts (default: as many as "
            "reach max_batches, the reference's 80 steps over its large corpus)",
            "range": (1, 1000),
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("lr", self.lr)
        _positive("steering_coeff", self.steering_coeff)
        if self.alpha is not None and self.alpha < 0:
            raise ConfigError(f"alpha={self.alpha} must be >= 0")
        if self.layer is not None and self.layer < 0:
            raise ConfigError(f"layer={self.layer} must be a decoder layer index, >= 0")


@dataclass
class FictitiousConfig(BenchmarkConfig):
    """The insertion of the fictitious facts: the benchmark's fields (``fictitious`` > 0; 40
    made-up subjects by default: the unlearners and the metric need the same value)."""

    fictitious: int = field(
        default=40,
        metadata={
            "help": "made-up subjects given facts the model cannot know (TOFU-style); give the unlearners and the "
            "unlearn metric the same value",
            "range": (1, 100000),
        },
    )


@dataclass
class UnlearnMetricsConfig(BenchmarkConfig):
    """Forget and retain accuracy on the benchmark's four-way questions, and free-form QA."""

    scoring: Literal["letter", "cloze"] = field(
        default="letter",
        metadata={
            "help": "letter: WMDP's format, the log-likelihood of ' A'..' D' after 'Answer:'; cloze: of each "
            "option's text after the fact's prompt (as small models are scored on MMLU)"
        },
    )
    qa: bool = field(default=True, metadata={"help": "also score free-form QA (forget_qa, retain_qa)"})
    batch_size: int = field(default=16, metadata={"help": "questions per forward pass", "range": (1, 4096)})
    qa_scoring: Literal["auto", "exact", "rouge"] = field(
        default="auto",
        metadata={
            "help": "free-form QA: exact = the share of answers the model completes greedily (every answer token its "
            "argmax); rouge = the mean ROUGE-L recall of the greedy answer (TOFU's, for long answers); auto = exact "
            "on facts, rouge on QA files",
            "since": SINCE_FILES,
        },
    )
    max_new_tokens: int = field(
        default=64,
        metadata={
            "help": "most tokens of a greedy answer scored by ROUGE-L (it also stops at the first newline)",
            "range": (1, 4096),
            "since": SINCE_FILES,
        },
    )
    tofu: bool | None = field(
        default=None,
        metadata={
            "help": "TOFU's metrics: truth ratios, forget quality, model utility. Default (none): when the benchmark "
            "has paraphrased and perturbed answers (TOFU's *_perturbed files, the fictitious facts); true: also on "
            "the fact benchmark (perturbed answers: the question's other options); false: never",
            "since": SINCE_FILES,
        },
    )
    retain_model: str | None = field(
        default=None,
        metadata={
            "help": "a model never trained on the forget set (named default, folder or hub id, as lmcompose loads "
            "models), whose forget-set truth ratios forget_quality compares against; computed once per run",
            "since": SINCE_FILES,
        },
    )
    utility_qa: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "question-answer files whose answers the model should keep, scored into model_utility as TOFU "
            "scores its real-authors and world-facts sets (real_authors_perturbed.json, world_facts_perturbed.json)",
            "since": SINCE_FILES,
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.utility_qa = _as_tuple(self.utility_qa)
