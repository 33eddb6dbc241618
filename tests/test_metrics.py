from __future__ import annotations

import math

import pytest
import torch
from lmcompose.api import Context, EditRecord
from lmcompose.compose import build_metrics
from lmcompose.metrics.edits import EditMetrics, Scorer
from lmcompose.metrics.perplexity import Perplexity
from lmcompose.models.tiny import tiny_model


def test_perplexity_equals_a_direct_computation(tmp_path, monkeypatch):
    monkeypatch.delenv("LMCOMPOSE_DATA_DIR", raising=False)
    lm = tiny_model("llama")
    ctx = Context()
    metric = Perplexity.from_overrides({"seqlen": 64, "max_tokens": 256, "batch_size": 3})
    out = metric.compute(lm, ctx)
    assert out["ppl_tokens"] == 256 and out["ppl_seqlen"] == 64
    assert any("bundled sample text" in n for n in ctx.notes)
    from lmcompose.data import sample_text

    ids = lm.tokenizer(sample_text(), return_tensors="pt").input_ids[0][:256].view(4, 64)
    nlls = []
    with torch.no_grad():
        for row in ids:
            loss = lm.model(row[None], labels=row[None]).loss
            nlls.append(float(loss))
    assert out["general_nll"] == pytest.approx(sum(nlls) / 4, rel=1e-5)
    assert out["perplexity"] == pytest.approx(math.exp(sum(nlls) / 4), rel=1e-5)


def test_perplexity_reads_wikitext_test_from_the_data_dir(shared_data, monkeypatch):
    monkeypatch.setenv("LMCOMPOSE_DATA_DIR", str(shared_data))
    lm = tiny_model("gpt2")
    ctx = Context()
    out = Perplexity.from_overrides({"seqlen": 128, "max_tokens": 256}).compute(lm, ctx)
    assert out["ppl_corpus"].endswith("wiki.test.raw") and not ctx.notes
    # a random tiny model is near uniform over its 512-token vocabulary
    assert 100 < out["perplexity"] < 5000


def record(prompt, subject, new, true=None, **kw):
    return EditRecord(case_id=subject, subject=subject, prompt=prompt, target_new=new, target_true=true, **kw)


def test_scorer_f1_is_token_set_f1():
    lm = tiny_model("llama")
    sc = Scorer(lm, 4)
    t = sc.encode("Berlin is the capital of", "Germany")[1]
    assert sc.f1(t, t) == 1.0
    assert sc.f1([], t) == 0.0
    a, b = (
        sc.tok(" river town", add_special_tokens=False).input_ids,
        sc.tok(" river crossing", add_special_tokens=False).input_ids,
    )
    a, b = [i for i in a if not sc.excluded(i)], [i for i in b if not sc.excluded(i)]
    common = len(set(a[: len(b)]) & set(b))
    p, r = common / len(set(a[: len(b)])), common / len(set(b))
    assert sc.f1(a, b) == pytest.approx(2 * p * r / (p + r))


def sentencepiece_tokenizer():
    """A Llama-2-style sentencepiece tokenizer trained offline on the bundled text: a dummy
    "▁" prefix, spaces as "▁", so " the" is ["▁", "▁the"] as Llama-2's " Paris" is ["▁", "▁Paris"]."""
    from lmcompose.data import sample_text
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    trainer = trainers.UnigramTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>", max_piece_length=8
    )
    tok.train_from_iterator(sample_text().splitlines(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_f1_drops_the_bare_sentencepiece_space_then_clips_and_scores_sets():
    class _LM:
        tokenizer = sentencepiece_tokenizer()

    sc = Scorer(_LM(), 4)
    ids = lambda text: sc.tok(text, add_special_tokens=False).input_ids  # noqa: E731
    target = ids(" the")
    spacer, the = target
    assert sc.tok.convert_ids_to_tokens(target) == ["▁", "▁the"] and sc.excluded(spacer) and not sc.excluded(the)
    (of,) = ids("of")
    # the model answers "the of": clipped to the one token the target has left, a full match
    # (clipping first and keeping the spacer would score 2/3)
    assert sc.f1([the, of], target) == 1.0
    assert sc.f1([spacer, the], target) == 1.0  # a generated spacer is dropped too
    assert sc.f1([sc.tok.bos_token_id, of, the], target) == 0.0  # BOS dropped; "of" is the one token kept
    # sets, not multisets: "the the" against "the of" has precision 1, recall 1/2
    assert sc.f1([the, the], [the, of]) == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_edit_scorers_follow_their_definitions():
    """On a tiny model, compute each scorer by hand and compare."""
    lm = tiny_model("llama", seed=3)
    recs = [
        record(
            "Berlin is the capital of",
            "Berlin",
            "Italy",
            "Germany",
            rephrases=["The capital Berlin belongs to"],
            locality=[{"prompt": "Madrid is the capital of", "answer": "Spain"}],
        )
    ]
    ctx = Context(edits=recs)
    metric = EditMetrics.from_overrides({"scorer": "prob"})
    metric.reference(lm, ctx)  # the unedited model: the engine records it before the first step
    out = metric.compute(lm, ctx)
    sc = Scorer(lm, 4)
    with torch.no_grad():

        def nll(p, t):
            pi, ti = sc.encode(p, t)
            ids = torch.tensor([pi + ti])
            logp = torch.log_softmax(lm.model(ids).logits[0].float(), -1)
            return -float(sum(logp[len(pi) - 1 + j, tok] for j, tok in enumerate(ti)) / len(ti)), logp

        new, logp = nll("Berlin is the capital of", "Italy")
        true, _ = nll("Berlin is the capital of", "Germany")
    assert out["edit_nll"] == pytest.approx(new, rel=1e-4)
    assert out["edit_success_prob"] == (1.0 if new < true else 0.0)
    assert out["edit_success"] == out["edit_success_prob"]
    pi, ti = sc.encode("Berlin is the capital of", "Italy")
    preds = [int(logp[len(pi) - 1 + j].argmax()) for j in range(len(ti))]
    assert out["edit_success_accuracy"] == pytest.approx(sum(p == t for p, t in zip(preds, ti, strict=True)) / len(ti))
    gen = sc.generate_for([("Berlin is the capital of", "Italy")])[0]
    assert out["edit_success_f1"] == pytest.approx(sc.f1(gen, ti))
    assert out["locality_preservation"] == 1.0  # the model is the unedited one
    assert out["locality"] == out["locality_preservation"] and out["locality_scorer"] == "preservation"
    # what the model knows of the neighbour: teacher-forced accuracy of "Spain" after the prompt
    pi, ti = sc.encode("Madrid is the capital of", "Spain")
    with torch.no_grad():
        logits = lm.model(torch.tensor([pi + ti])).logits[0]
    hits = [int(logits[len(pi) - 1 + j].argmax()) == tok for j, tok in enumerate(ti)]
    assert out["neighbour_knowledge_accuracy"] == pytest.approx(sum(hits) / len(ti))
    assert 0.0 <= out["generalization_f1"] <= 1.0


def test_locality_preservation_falls_when_the_model_changes():
    lm = tiny_model("gpt2")
    from lmcompose.compose import load_edits

    ctx = Context(edits=load_edits("records", limit=6))
    metric = EditMetrics()
    metric.reference(lm, ctx)
    assert metric.compute(lm, ctx)["locality_preservation"] == 1.0
    with torch.no_grad():
        for name, _ in lm.linear_layers():
            lm.weight(name).mul_(-3.0)
    assert metric.compute(lm, ctx)["locality_preservation"] < 1.0


def test_edit_success_is_one_when_the_target_is_what_the_model_says():
    """Use the model's own greedy continuation as the new target: f1 and accuracy are 1."""
    lm = tiny_model("opt", seed=5)
    sc = Scorer(lm, 4)
    prompt = "The river town of"
    gen = sc.generate([prompt], [3])[0]
    target = lm.tokenizer.decode(gen)
    assert target.startswith(" ")
    if sc.tok(target, add_special_tokens=False).input_ids != gen:
        pytest.skip("continuation does not re-tokenize identically")
    recs = [record(prompt, "river", target.strip())]  # the target gets its leading space back
    out = EditMetrics().compute(lm, Context(edits=recs))
    assert out["edit_success_f1"] == 1.0 and out["edit_success_accuracy"] == 1.0


def test_records_without_true_target_use_the_new_target_probability():
    lm = tiny_model("llama")
    recs = [record("Berlin is the capital of", "Berlin", "Italy")]
    out = EditMetrics.from_overrides({"scorer": "prob"}).compute(lm, Context(edits=recs))
    assert out["edit_success_prob"] == pytest.approx(math.exp(-out["edit_nll"]), rel=1e-5)


def test_multi_hop_accuracy_counts_any_question(tmp_path):
    # MQuAKE's protocol reads its few-shot prompts from the data folder (tests/test_multi_hop.py)
    prompts = tmp_path / "mquake" / "prompts"
    prompts.mkdir(parents=True)
    (prompts / "multihop-prompts.txt").write_text("Q: Who wrote Hamlet? A: William Shakespeare")
    lm = tiny_model("llama")
    recs = [
        record(
            "Berlin is the capital of",
            "Berlin",
            "Italy",
            multi_hop={"questions": ["Where?"], "answer": "x", "new_answer": "zzzz-never"},
        )
    ]
    assert EditMetrics().compute(lm, Context(edits=recs, data_dir=tmp_path))["multi_hop_accuracy"] == 0.0


def test_edit_metrics_without_edits_report_nothing():
    assert EditMetrics().compute(tiny_model("llama"), Context()) == {}


def test_flops_scale_with_density():
    lm = tiny_model("llama")
    metric = build_metrics(["flops"], {"flops": {"latency_repeats": 1}})[0]
    ctx = Context()
    dense = metric.compute(lm, ctx)
    assert dense["flops"] == dense["flops_dense"] > 0
    linear = sum(2 * 128 * lm.weight(n).numel() for n, _ in lm.linear_layers())
    from lmcompose.compose import build_intervention, parse_step

    build_intervention(parse_step("magnitude:sparsity=0.5")).apply(lm, ctx)
    sparse = metric.compute(lm, ctx)
    assert sparse["flops"] == pytest.approx(dense["flops"] - linear / 2)
    assert sparse["latency_ms"] > 0


def test_a_quantizers_zeros_are_not_pruned_weights():
    from lmcompose.compose import build_intervention, parse_step

    metrics = build_metrics(["flops", "avg_bits"], {"flops": {"latency_repeats": 0}})
    ctx = Context()
    lm = tiny_model("llama")
    dense = metrics[0].compute(lm, ctx)
    build_intervention(parse_step("rtn:bits=2,group_size=32")).apply(lm, ctx)
    zeros = sum(int((lm.weight(n) == 0).sum()) for n, _ in lm.linear_layers())
    assert zeros > 0  # 2-bit round-to-nearest puts many weights on the grid's 0
    assert metrics[0].compute(lm, ctx)["flops"] == dense["flops"] and metrics[1].compute(lm, ctx)["sparsity"] == 0
    # pruned, then quantized: the pruner's mask counts, the quantizer's extra zeros do not
    lm = tiny_model("llama")
    build_intervention(parse_step("magnitude:sparsity=0.5")).apply(lm, ctx)
    build_intervention(parse_step("rtn:bits=2,group_size=32")).apply(lm, ctx)
    assert metrics[1].compute(lm, ctx)["sparsity"] == pytest.approx(0.5, abs=1e-3)
    linear = sum(2 * 128 * lm.weight(n).numel() for n, _ in lm.linear_layers())
    assert metrics[0].compute(lm, ctx)["flops"] == pytest.approx(dense["flops"] - linear / 2, rel=1e-3)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_greedy_tokens_from_teacher_forcing_equal_generation(arch):
    """generate_for with the teacher-forced argmaxes gives what generate() gives, for
    targets the model agrees with in full, for 2 of 4 tokens (generation continues from
    there), for the first token only, and not at all. Targets are given as token ids."""
    lm = tiny_model(arch, seed=3)
    sc = Scorer(lm, 4)
    prompts = ["The river town of", "Danny Glover is a citizen of", "Berlin is the capital of"]
    own = sc.generate(prompts, [4] * len(prompts))
    vocab = lm.model.config.vocab_size
    ids = {p: sc.tok(p, add_special_tokens=True).input_ids for p in prompts}
    targets: dict[str, list[int]] = {}
    pairs = []
    for p, g in zip(prompts, own, strict=True):
        for name, t in (
            ("full", g),
            ("half", g[:2] + [(g[2] + 1) % vocab, g[3]]),
            ("first", [g[0], (g[1] + 1) % vocab]),
            ("none", [(g[0] + 1) % vocab, g[1], g[2]]),
        ):
            targets[f"{p}|{name}"] = t
            pairs.append((p, f"{p}|{name}"))
    sc.encode = lambda p, t: (ids[p], targets[t])
    forced = sc.teacher_forced(pairs)
    agree = [
        next(
            (k for k, (a, b) in enumerate(zip(f["argmax"][len(ids[p]) - 1 :], targets[t], strict=True)) if a != b),
            len(targets[t]),
        )
        for (p, t), f in zip(pairs, forced, strict=True)
    ]
    assert agree[:4] == [4, 2, 1, 0]
    assert sc.generate_for(pairs, forced) == sc.generate_for(pairs)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_teacher_forcing_batched_by_length_equals_one_at_a_time(arch):
    """Pairs of very different lengths, batched shortest first, come back in the order given
    with the NLL, accuracy and argmaxes of scoring each pair on its own (no padding)."""
    lm = tiny_model(arch, seed=1)
    pairs = [
        ("The river town of Oxford lies on the banks of a long and slow", " Thames"),
        ("A", " b"),
        ("Danny Glover is a citizen of", " the United States of America"),
        ("Berlin is", " a city"),
        ("The capital of France, a country in western Europe, is", " Paris"),
    ]
    with torch.inference_mode():
        batched = Scorer(lm, 2).teacher_forced(pairs)
        alone = [Scorer(lm, 1).teacher_forced([pair])[0] for pair in pairs]
    lengths = [len(f["argmax"]) for f in batched]
    assert lengths == [len(f["argmax"]) for f in alone] and lengths != sorted(lengths)
    for b, a in zip(batched, alone, strict=True):
        assert b["nll"] == pytest.approx(a["nll"], abs=1e-5)
        assert b["accuracy"] == a["accuracy"] and b["argmax"] == a["argmax"]
