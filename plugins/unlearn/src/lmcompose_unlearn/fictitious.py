"""TOFU-style fictitious facts: made-up subjects given facts the model cannot know, inserted
by a short fine-tune, then unlearned.

TOFU (Maini et al. 2024) fine-tunes a model on question-answer pairs about 200 made-up
authors, unlearns 1, 5 or 10% of the authors, and compares the result with a *retain
model* fine-tuned on the other authors only: a model that never learned the forget set is
the goal. Here the same design runs offline:

* **subjects**: ``fictitious`` made-up person names, seeded (``facts_seed``): two or three
  syllables per word, every word at least two tokens of the model's tokenizer (no name is
  a word it has a token for) and no name a subject of the edit datasets;
* **facts**: for each subject one fact per relation (``fictitious_relations``, default up to
  four person relations of CounterFact: places of birth, citizenship, occupations, native
  languages), its answer one of the relation's answers in the data, drawn with the seed;
* **phrasings**: CounterFact's prompt templates of the relation, most frequent first. The
  first is the fact's prompt (its question, QA and the unlearners' sentence); the second,
  when the relation has one, is held out as the paraphrase the truth ratio is asked on;
  the insertion trains on every template but the held-out one;
* **forget and retain**: the first ``fictitious_forget`` share of the subjects (at least
  one) are forgotten, the rest retained (TOFU's forget10 is 10%);
* **insertion**: the ``fictitious`` step fine-tunes every parameter on the inserted facts'
  answers (Adam, ``insert_lr``, ``insert_epochs`` passes in seeded order, batches of
  ``insert_batch_size``) — TOFU's fine-tune on its QA pairs. MEMIT is not used: its key is
  the subject's representation, so the several facts of one new subject would be written
  as competing values for one key, and a made-up subject has no representation to key on;
* **the retain model** is the unmodified model given the same fine-tune on the retain
  facts only; the ``unlearn`` metric builds it once per run (``ctx.references``) and
  compares the forget facts' truth ratios against its own (forget quality).
"""

from __future__ import annotations

import copy
import random
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmcompose.api import Context, Intervention, StepReport, StrengthKnob
from lmcompose.errors import ConfigError, DataError
from lmcompose.metrics.edits import target_text

from lmcompose_unlearn.config import FictitiousConfig
from lmcompose_unlearn.facts import Fact, FactBenchmark, Topic, collect_topics, make_questions

if TYPE_CHECKING:
    from lmcompose import LM

    from lmcompose_unlearn.config import BenchmarkConfig
    from lmcompose_unlearn.training import TrainLog

__all__ = [
    "PERSON_RELATIONS",
    "InsertFictitious",
    "build_fictitious_benchmark",
    "insert_facts",
    "made_up_names",
    "relation_templates",
    "retain_model",
]

#: CounterFact relations that fit a person, the default relations of the made-up subjects
PERSON_RELATIONS = ("P19", "P27", "P106", "P103", "P101", "P937", "P20", "P1412")
DEFAULT_RELATIONS = 4
#: ctx.state key where the insertion step records the benchmark it inserted
INSERTED = "unlearn-inserted"

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "st", "gl")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "ia")
_CODAS = ("", "", "n", "r", "l", "s", "th", "x", "nd")


def _word(rng: random.Random) -> str:
    return "".join(
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.choice((2, 2, 3)))
    ).capitalize()


def made_up_names(n: int, seed: int, tokenizer: Any, taken: set[str]) -> list[str]:
    """``n`` distinct made-up "First Last" names, seeded: each word at least two tokens of
    ``tokenizer`` (after a space, as it appears in a prompt) and no name in ``taken``."""
    rng = random.Random(f"{seed}|names")
    names: list[str] = []
    seen = {t.casefold() for t in taken}
    for _ in range(1000 * max(1, n)):
        if len(names) == n:
            return names
        words = [_word(rng), _word(rng)]
        name = " ".join(words)
        if name.casefold() in seen:
            continue
        if any(len(tokenizer(" " + w, add_special_tokens=False).input_ids) < 2 for w in words):
            continue
        seen.add(name.casefold())
        names.append(name)
    raise DataError(f"fictitious={n}: could not make that many distinct names; ask for fewer subjects")


def relation_templates(topic: Topic) -> list[str]:
    """The prompt templates of a relation's facts (``{}`` for the subject), most frequent
    first, then alphabetical."""
    counts: Counter[str] = Counter()
    for f in topic.facts:
        i = f.prompt.find(f.subject)
        if i >= 0:
            counts[f.prompt[:i] + "{}" + f.prompt[i + len(f.subject) :]] += 1
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _relations(config: BenchmarkConfig, topics: dict[str, Topic]) -> list[str]:
    eligible = {k for k, t in topics.items() if ":" not in k and len(t.answers) >= 4 and relation_templates(t)}
    if config.fictitious_relations:
        for r in config.fictitious_relations:
            if r not in topics:
                raise ConfigError(
                    f"fictitious_relations: {r!r} is not a relation of datasets {'+'.join(config.datasets)}; name "
                    f"relations such as {', '.join(sorted(eligible)[:8])}"
                )
            make_questions([], topics[r], config.facts_seed)  # fewer than four answers: one message
            if not relation_templates(topics[r]):
                raise ConfigError(
                    f"fictitious_relations: {r!r} has no prompt that names its subject, so no template to give a "
                    "made-up subject the fact in; name another relation"
                )
        return list(config.fictitious_relations)
    chosen = [r for r in PERSON_RELATIONS if r in eligible][:DEFAULT_RELATIONS]
    if not chosen:
        chosen = sorted(eligible, key=lambda k: (-len(topics[k].answers), k))[:DEFAULT_RELATIONS]
    if not chosen:
        raise DataError(
            f"datasets {'+'.join(config.datasets)}: no relation with four or more answers to give made-up subjects "
            "facts from; name other datasets"
        )
    return chosen


def build_fictitious_benchmark(config: BenchmarkConfig, tokenizer: Any, ctx: Context) -> FactBenchmark:
    """The made-up subjects, their facts, questions and phrasings (module docstring)."""
    topics, _skipped = collect_topics(config.datasets, ctx)
    relations = _relations(config, topics)
    taken = {f.subject for t in topics.values() for f in t.facts}
    names = made_up_names(config.fictitious, config.facts_seed, tokenizer, taken)
    n_forget = max(1, round(config.fictitious * config.fictitious_forget))
    if n_forget >= len(names):
        raise ConfigError(
            f"fictitious={config.fictitious} with fictitious_forget={config.fictitious_forget} leaves no subject to "
            "retain; ask for more subjects or a smaller forget share"
        )
    rng = random.Random(f"{config.facts_seed}|fictitious")
    facts: dict[str, list[Fact]] = {"forget": [], "retain": []}
    inserted: dict[str, list[Fact]] = {"forget": [], "retain": []}
    pools = {r: Topic(r, topics[r].label, list(topics[r].facts)) for r in relations}
    phrasings = {r: relation_templates(topics[r]) for r in relations}
    for i, name in enumerate(names):
        side = "forget" if i < n_forget else "retain"
        for r in relations:
            templates = phrasings[r]
            answer = rng.choice(pools[r].answers)
            held_out = templates[1:2]
            fact = Fact(
                r,
                name,
                templates[0].format(name),
                answer,
                f"fictitious:{i}:{r}",
                tuple(t.format(name) for t in held_out),
            )
            facts[side].append(fact)
            for t in templates:
                if t not in held_out:
                    inserted[side].append(Fact(r, name, t.format(name), answer, fact.source))
    questions = {
        side: [
            q
            for r in relations
            for q in make_questions([f for f in facts[side] if f.topic == r], pools[r], config.facts_seed)
        ]
        for side in facts
    }
    summary = {
        "benchmark": "fictitious",
        "subjects": len(names),
        "forget_subjects": names[:n_forget],
        "relations": relations,
        "n_forget": len(facts["forget"]),
        "n_retain": len(facts["retain"]),
        "n_inserted": len(inserted["forget"]) + len(inserted["retain"]),
        "forget_topics": relations,
        "retain_topics": relations,
    }
    return FactBenchmark(
        list(relations),
        list(relations),
        facts["forget"],
        facts["retain"],
        questions["forget"],
        questions["retain"],
        summary,
        kind="fictitious",
        insert_forget=inserted["forget"],
        insert_retain=inserted["retain"],
    )


def insert_facts(lm: LM, facts: Sequence[Fact], config: BenchmarkConfig, seed: int, advance: Any = None) -> TrainLog:
    """Fine-tune every parameter of ``lm`` on the answers of ``facts`` after their prompts:
    Adam at ``insert_lr``, ``insert_epochs`` passes, each in a seeded order, batches of
    ``insert_batch_size`` (the loss: the batch's mean answer NLL)."""
    from lmcompose_unlearn.intervention import _nll
    from lmcompose_unlearn.training import train

    tok = lm.tokenizer
    examples = []
    for f in facts:
        p = list(tok(f.prompt, add_special_tokens=True).input_ids)
        a = list(tok(target_text(f.prompt, f.answer), add_special_tokens=False).input_ids)
        examples.append((p + a, len(p)))
    batches = []
    size = config.insert_batch_size
    for epoch in range(config.insert_epochs):
        order = list(range(len(examples)))
        random.Random(f"{seed}|insert|{epoch}").shuffle(order)
        batches += [[examples[j] for j in order[i : i + size]] for i in range(0, len(order), size)]
    params = list(lm.model.named_parameters())
    return train(lm, params, batches, lambda b: _nll(lm, b).mean(), lr=config.insert_lr, advance=advance)


def retain_model(lm: LM, bench: FactBenchmark, config: BenchmarkConfig, seed: int) -> LM:
    """A copy of ``lm`` (the unmodified model) given the insertion of the retain facts only."""
    model = copy.deepcopy(lm)
    insert_facts(model, bench.insert_retain or [], config, seed)
    return model


class InsertFictitious(Intervention):
    """Insert the fictitious facts (``fictitious.py``): the TOFU-style target model, which
    the unlearners then make forget the forget subjects.

    Lifecycle: ``apply`` builds the made-up subjects and their facts from the benchmark
    fields (the same fields and defaults as every unlearner's and the ``unlearn`` metric's)
    and fine-tunes every parameter on the forget and retain facts' phrasings; it reports how
    many facts the model then answers greedily. Put it first: the unlearners and the metric
    read the same facts. No ``project``. Sample config::

        fictitious:fictitious=40            # 40 made-up people, 4 facts each, 10% forgotten
        fictitious:fictitious=40,insert_epochs=20,insert_lr=1e-4
    """

    name = "fictitious"
    kind = "insert"
    Config = FictitiousConfig
    strength = StrengthKnob("insert_epochs", 1, 1000, integer=True)

    def apply(self, lm: LM, ctx: Context) -> StepReport:
        from lmcompose_unlearn.facts import benchmark_for, known_facts

        start = time.perf_counter()
        c = self.config
        bench = benchmark_for(c, lm, ctx)
        facts = [*(bench.insert_forget or []), *(bench.insert_retain or [])]
        n_batches = c.insert_epochs * -(-len(facts) // c.insert_batch_size)
        with ctx.progress.task(
            f"fictitious ({len(facts)} phrasings of {len(bench.forget) + len(bench.retain)} facts)", n_batches
        ) as advance:
            log = insert_facts(lm, facts, c, ctx.seed, advance)
        if log.stopped is not None:
            ctx.note(
                f"step 'fictitious': the insertion stopped early: {log.stopped}; lower insert_lr (now {c.insert_lr:g})"
            )
        ctx.state[INSERTED] = c.benchmark_key()
        known = known_facts(lm, [*bench.forget, *bench.retain])
        rep = self.report(
            subjects=bench.summary["subjects"],
            relations=bench.summary["relations"],
            n_forget=len(bench.forget),
            n_retain=len(bench.retain),
            n_inserted=len(facts),
            steps=log.steps,
            loss_first=log.loss_first,
            loss_final=log.loss_final,
            stopped=log.stopped,
            known_after=sum(known) / len(known),
        )
        rep.elapsed_s = time.perf_counter() - start
        return rep
