"""Multi-hop accuracy as MQuAKE measures it: its few-shot prompts from the data folder, greedy
generation, the answer read off the generation and matched exactly against the answer and
its aliases, a case right when any of its questions is; and each bad input as one message."""

from __future__ import annotations

import pytest
import torch
from lmcompose.api import Context, EditRecord
from lmcompose.errors import DataError
from lmcompose.metrics._multi_hop import MultiHopProtocol, load_protocol
from lmcompose.metrics.edits import EditMetrics, Scorer
from lmcompose.models.tiny import tiny_model
from lmcompose.testing import TINY_ARCHITECTURES

#: demonstrations in the format of MQuAKE's files, short enough for a tiny model's 256 positions
STANDARD = "Q: What is the capital of France? A: Paris\nQ: Who wrote Hamlet? A: William Shakespeare"
COT = "Question: Who wrote Hamlet?\nThoughts: Hamlet was written by William Shakespeare.\nAnswer: William Shakespeare"


def data_folder(root, standard=STANDARD, cot=COT):
    prompts = root / "mquake" / "prompts"
    prompts.mkdir(parents=True)
    if standard is not None:
        (prompts / "multihop-prompts.txt").write_text(standard + "\n")
    if cot is not None:
        (prompts / "multihop-cot-prompts.txt").write_text(cot)
    return root


def case(case_id, questions, answer, new_answer, aliases=(), new_aliases=()):
    return EditRecord(
        case_id=case_id,
        subject="Hamlet",
        prompt="Hamlet was written by",
        target_new="Goethe",
        target_true="Shakespeare",
        multi_hop={
            "questions": list(questions),
            "answer": answer,
            "new_answer": new_answer,
            "answer_aliases": list(aliases),
            "new_answer_aliases": list(new_aliases),
        },
    )


def test_the_questions_follow_the_demonstrations_in_their_own_format(tmp_path):
    folder = data_folder(tmp_path)
    standard = load_protocol("mquake", folder)
    assert standard.prompt("Who is the spouse of Joe Biden? ") == STANDARD + "\nQ: Who is the spouse of Joe Biden? A:"
    assert standard.source == str(folder / "mquake/prompts/multihop-prompts.txt")
    cot = load_protocol("mquake_cot", folder)
    assert cot.prompt("Who is Joe Biden married to?") == COT + "\n\nQuestion: Who is Joe Biden married to?\nThoughts:"
    assert load_protocol("zero_shot", None).prompt("Where?") == "Q: Where?\nA:"


def test_the_real_prompt_files_are_read_from_the_data_folder(shared_data):
    protocol = load_protocol("mquake", shared_data)
    prompt = protocol.prompt("Who is the spouse of the US president?")
    assert prompt.startswith("Q: What is the country where The Rotunda is located? A: United States of America\n")
    assert prompt.endswith("A: Elizabeth II\nQ: Who is the spouse of the US president? A:")
    cot = load_protocol("mquake_cot", shared_data).prompt("Who owns Chevrolet?")
    assert cot.endswith("Answer: General Motors\n\nQuestion: Who owns Chevrolet?\nThoughts:")


@pytest.mark.parametrize(
    "generated,answer,aliases,right",
    [
        (" Japan\nQ: Who was", "Japan", [], True),
        (" Nihon\nQ:", "Japan", ["Nihon", "JP"], True),  # an alias counts
        (" japan\n", "Japan", [], False),  # exactly: case counts
        (" Japan.\n", "Japan", [], False),  # and punctuation
        (" Japan is an island", "Japan", [], False),  # the whole line is the answer
        ("\nJapan", "Japan", [], False),  # an empty first line answers nothing
    ],
)
def test_a_standard_answer_is_its_line_matched_exactly(generated, answer, aliases, right):
    assert MultiHopProtocol("mquake", STANDARD).correct(generated, answer, aliases) is right


def test_a_chain_of_thought_answer_is_its_answer_line():
    cot = MultiHopProtocol("mquake_cot", COT)
    text = " Nissan 200SX was created by Nissan. Nissan is in Japan.\nAnswer: Japan\n\nQuestion: Who"
    assert cot.answer(text) == "Japan" and cot.correct(text, "Japan", [])
    assert cot.finished(" Nissan is in Japan.\nAnswer: Japan\n")
    assert not cot.finished(" Nissan is in Japan.\nAnswer: Ja")  # the answer line is not over yet
    assert cot.answer(" Nissan is in Japan.\nAnswer: Japan") == "Japan"  # generation ran out at the end
    assert cot.finished(" I do not know.\n\n") and cot.answer(" I do not know.\n\n") == ""
    assert not cot.correct(" Japan", "Japan", [])  # no Answer: line, no answer
    assert cot.answer(" I do not know.\n\nQuestion: Who?\nThoughts: ...\nAnswer: Japan\n") == ""  # another block


def test_zero_shot_keeps_the_lenient_match_of_lmcompose_0_3():
    zero = MultiHopProtocol("zero_shot")
    assert zero.correct(" japan is an island", "Japan", [])
    assert zero.correct(" It is in japan\nmore", "Japan", [])
    assert not zero.correct(" France\nJapan", "Japan", [])


def test_a_missing_prompt_file_is_one_message(tmp_path, monkeypatch):
    monkeypatch.delenv("LMCOMPOSE_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="no data folder is set.*LMCOMPOSE_DATA_DIR.*multi_hop: zero_shot") as err:
        load_protocol("mquake", None)
    assert "prompts/multihop-prompts.txt of github.com/princeton-nlp/MQuAKE" in str(err.value)
    folder = data_folder(tmp_path / "a", cot=None)
    where = folder / "mquake" / "prompts" / "multihop-cot-prompts.txt"
    with pytest.raises(DataError, match=f"read from {where}, which does not exist") as err:
        load_protocol("mquake_cot", folder)
    assert "\n" not in str(err.value)
    empty = data_folder(tmp_path / "b", standard="\n\n")
    with pytest.raises(DataError, match="which is empty"):
        load_protocol("mquake", empty)
    # the metric stops at the base model's reference, before the first step
    with pytest.raises(DataError, match="does not exist"):
        EditMetrics.from_overrides({"multi_hop": "mquake_cot"}).reference(
            tiny_model("llama"), Context(edits=[case("c", ["Who?"], "a", "b")], data_dir=folder)
        )


def test_a_question_beyond_the_model_positions_names_its_record(tmp_path):
    folder = data_folder(tmp_path)
    long = case("long-case", ["Who?", "Who wrote it? " * 40], "a", "b")
    with pytest.raises(DataError, match=r"edit request 'long-case': multi-hop question 1 .* beyond the model's 256"):
        EditMetrics().compute(tiny_model("llama"), Context(edits=[long], data_dir=folder))
    # the check counts the tokens generated after the prompt: 160 for a chain of thought
    lm = tiny_model("llama")
    protocol = load_protocol("mquake_cot", folder)
    words = "Who wrote it? "
    question = "Who?"
    while len(lm.tokenizer(protocol.prompt(question)).input_ids) + 160 <= lm.max_positions:
        question = words + question
    fits_standard = len(lm.tokenizer(load_protocol("mquake", folder).prompt(question)).input_ids) + 32
    assert fits_standard <= lm.max_positions  # so the standard protocol asks it
    EditMetrics().reference(lm, Context(edits=[case("c", [question], "a", "b")], data_dir=folder))
    with pytest.raises(DataError, match="multi_hop: mquake_cot takes .* use a model with more positions"):
        EditMetrics.from_overrides({"multi_hop": "mquake_cot"}).reference(
            lm, Context(edits=[case("c", [question], "a", "b")], data_dir=folder)
        )


def peaked(arch):
    """A tiny model whose next-token logits are far apart (its LM head scaled up), so greedy
    tokens do not hang on rounding: two ways of computing them must pick the same ones."""
    lm = tiny_model(arch)
    with torch.no_grad():
        lm.model.get_output_embeddings().weight.mul_(40)
    return lm


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_the_shared_demonstrations_run_once_and_generate_what_whole_prompts_do(arch):
    lm = peaked(arch)
    protocol = MultiHopProtocol("mquake", STANDARD)
    prompts = [protocol.prompt(q) for q in ["Who?", "What is the capital of France?", "Why?"]]
    for finished in (lambda text: len(text) >= 12, lambda text: False):
        shared = Scorer(lm, 2).generate_until(prompts, 12, finished)  # batches of 2: a row alone at the end
        whole = Scorer(lm, 2, per_pair=True).generate_until(prompts, 12, finished)
        assert shared == whole
        alone = [Scorer(lm, 1, per_pair=True).generate_until([p], 12, finished)[0] for p in prompts]
        assert shared == alone


def test_a_finished_row_leaves_the_batch_and_the_others_generate_what_they_would_alone(monkeypatch):
    """Rows that finish early leave the shared-prefix batch (later steps run fewer rows); the
    rows still going generate what they generate alone."""
    from lmcompose.metrics.edits import _HeadAbove

    lm = peaked("llama")
    protocol = MultiHopProtocol("mquake", STANDARD)
    prompts = [protocol.prompt(q) for q in ["Who?", "What is the capital of France?", "Why?", "Where is Rome?"]]

    def finished(text):  # two of the four continuations say "The" after a few tokens
        return "The" in text or len(text) >= 40

    rows: list[int] = []
    real = _HeadAbove.hidden

    def hidden(self, ids, *args):
        if ids.shape[-1] == 1:
            rows.append(ids.shape[0])
        return real(self, ids, *args)

    with torch.inference_mode():
        alone = [Scorer(lm, 1, per_pair=True).generate_until([p], 16, finished)[0] for p in prompts]
        monkeypatch.setattr(_HeadAbove, "hidden", hidden)
        together = Scorer(lm, 4).generate_until(prompts, 16, finished)
    assert together == alone
    assert rows and rows[0] == 4 and min(rows) < 4 and rows == sorted(rows, reverse=True)


def test_generation_stops_where_it_is_finished():
    lm = peaked("llama")
    sc = Scorer(lm, 4)
    prompts = ["Q: Who? A:", "Q: What is the capital of France? A:"]
    one = sc.generate_until(prompts, 20, lambda text: True)
    assert one == [sc.tok.decode(g, skip_special_tokens=True) for g in sc.generate(prompts, [1, 1])]
    full = sc.generate_until(prompts, 20, lambda text: False)
    assert full == [sc.tok.decode(g, skip_special_tokens=True) for g in sc.generate(prompts, [20, 20])]
    three = sc.generate_until(prompts, 20, lambda text: len(sc.tok(text, add_special_tokens=False).input_ids) >= 3)
    assert [len(sc.tok(t, add_special_tokens=False).input_ids) for t in three] == [3, 3]


def test_a_case_is_right_when_any_question_is_answered_as_mquake_matches(tmp_path):
    """The answers are what the tiny model generates after MQuAKE's prompt (the same batches
    as the metric's), so each case's expected score is known."""
    folder = data_folder(tmp_path)
    lm = tiny_model("llama")
    protocol = load_protocol("mquake", folder)
    questions = ["Who?", "What is the capital of France?", "Where was Hamlet written?"]
    asked = questions * 2  # the two cases below ask the same questions, in this order
    texts = Scorer(lm, 16).generate_until([protocol.prompt(q) for q in asked], 32, protocol.finished)
    answers = [protocol.answer(t) for t in texts[:3]]
    assert answers == [protocol.answer(t) for t in texts[3:]]
    assert all(answers), f"the tiny model answers with an empty line: {answers}"
    records = [
        # question 1's answer is an alias of the new answer, question 2's the answer before editing
        case("right", questions, answers[2], "never said", new_aliases=["nor this", answers[1]]),
        # question 0's answer with more after it, and in another case: no exact match
        case("wrong", questions, "never said", answers[0] + " and more", aliases=[answers[0].swapcase() + "x"]),
        EditRecord(case_id="plain", subject="Paris", prompt="Paris is in", target_new="Italy"),
    ]
    out = EditMetrics().compute(lm, Context(edits=records, data_dir=folder))
    assert out["multi_hop_protocol"] == "mquake"
    assert out["multi_hop_accuracy"] == 0.5 and out["multi_hop_accuracy_original"] == 0.5
    per = out["per_edit"]
    assert per["multi_hop_accuracy"] == [1.0, 0.0, None]
    assert per["multi_hop_accuracy_original"] == [1.0, 0.0, None]
    # records without multi-hop questions: no protocol named, no prompt file needed
    plain = EditMetrics().compute(lm, Context(edits=records[2:], data_dir=tmp_path / "nowhere"))
    assert plain["multi_hop_accuracy"] is None and "multi_hop_protocol" not in plain


@pytest.mark.parametrize(
    "multi_hop,message",
    [
        ({"questions": [], "answer": "a", "new_answer": "b"}, "multi_hop.questions is empty"),
        ({"questions": ["Who?", ""], "answer": "a", "new_answer": "b"}, r"multi_hop.questions\[1\] must be"),
        ({"questions": ["Who?"], "answer": "a", "new_answer": ""}, "multi_hop.new_answer must be a non-empty"),
        ({"questions": ["Who?"], "answer": 3, "new_answer": "b"}, "multi_hop.answer must be a non-empty"),
        (
            {"questions": ["Who?"], "answer": "a", "new_answer": "b", "new_answer_aliases": "b2"},
            "multi_hop.new_answer_aliases must be a list",
        ),
        ({"questions": ["Who?"], "answer": "a"}, "new_answer"),
    ],
)
def test_a_record_without_what_multi_hop_scoring_needs_is_one_message(multi_hop, message):
    with pytest.raises(DataError, match=f"edit record 'x': .*{message}"):
        EditRecord(case_id="x", subject="Paris", prompt="Paris is in", target_new="Italy", multi_hop=multi_hop)


def test_the_study_report_shows_multi_hop_accuracy_where_the_rows_have_it():
    from lmcompose.studies.report import build_study_report, load_study_rows

    from tests.test_intervals import noisy, study

    def final_table(rows, lines):
        rep = build_study_report(load_study_rows(rows), per_edit=lines)
        return next(t for t in rep.tables if t.title.endswith("final model per order and strength"))

    rows, lines = study({"awq": noisy(10)})
    plain = final_table(rows, lines)
    assert "multi_hop_accuracy" not in plain.columns  # CounterFact-like rows: not measured, no column
    for r in rows:
        r["multi_hop_accuracy"] = 0.5 if r["position"] == 0 else 0.25 if r["replicate"] == 0 else 0.75
    table = final_table(rows, lines)
    column = table.columns.index("multi_hop_accuracy")
    assert table.rows and all(row[column] == "0.5000" for row in table.rows)  # mean of the two replicates
