"""Cross-package: the dataset plugins are listed and usable from the CLI."""

from __future__ import annotations

from lmcompose.compose import load_edits
from lmcompose.plugins import get_datasets
from lmcompose_cli.main import app
from typer.testing import CliRunner


def test_list_datasets_shows_the_plugins():
    res = CliRunner().invoke(app, ["list", "datasets"])
    assert res.exit_code == 0
    for name in ("counterfact", "zsre", "mquake", "records", "wikitext2"):
        assert name in res.output
    assert get_datasets().entry("counterfact").distribution == "lmcompose-counterfact"


def test_records_dataset_sample_and_errors(tmp_path):
    import pytest
    from lmcompose.errors import DataError

    assert len(load_edits("records", seed=None)) == 20
    p = tmp_path / "r.jsonl"
    p.write_text('{"case_id": 1, "subject": "A", "prompt": "A is", "target_new": "b"}\n{"case_id": 2}\n')
    with pytest.raises(DataError, match=r"record 1 \(case_id 2\).*missing"):
        load_edits("records", source=p)
    assert len(load_edits("records", source=p, skip_invalid=True)) == 1


def test_run_with_skip_invalid(tmp_path):
    from lmcompose.models.tiny import tiny_model

    model = tmp_path / "m"
    tiny_model("llama").save(model)
    data = tmp_path / "r.jsonl"
    data.write_text(
        '{"case_id": 1, "subject": "A", "prompt": "A is", "target_new": "b"}\n{"case_id": 2, "subject": "Z", '
        '"prompt": "A is", "target_new": "b"}\n'
    )
    args = [
        "run",
        str(model),
        "magnitude",
        "--dataset",
        "records",
        "--dataset-source",
        str(data),
        "--metrics",
        "edit",
        "--out",
        str(tmp_path / "o"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "does not occur in prompt" in res.output
    res = CliRunner().invoke(app, [*args, "--skip-invalid"])
    assert res.exit_code == 0, res.output
    assert "skipped 1 invalid record(s)" in res.output


def test_wikitext2_corpus_reads_the_data_folder(shared_data, monkeypatch):
    from lmcompose.datasets import WikiText2

    monkeypatch.setenv("LMCOMPOSE_DATA_DIR", str(shared_data))
    text = WikiText2().load_text("test")
    raw = (shared_data / "wikitext-2-raw/wiki.test.raw").read_text()
    rows = [line + "\n" if line.strip() else "" for line in raw.split("\n")[:-1]]
    assert len(rows) == 4358 and text == "\n\n".join(rows)
    assert WikiText2().load_text("train").lstrip("\n").startswith(" = Valkyria Chronicles III = ")
    assert len(WikiText2().load_text("validation").split("\n\n")) == 3760


def test_wikitext2_without_data_is_a_clear_error(monkeypatch):
    import pytest
    from lmcompose.datasets import WikiText2
    from lmcompose.errors import DataError

    monkeypatch.delenv("LMCOMPOSE_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="LMCOMPOSE_DATA_DIR"):
        WikiText2().load_text("test")


def test_text_file_corpus_and_calibration_windows(tmp_path):
    import pytest
    from lmcompose.api import Context
    from lmcompose.datasets import TextFile
    from lmcompose.errors import DataError
    from lmcompose.models.tiny import tiny_model

    f = tmp_path / "t.txt"
    f.write_text("hello world")
    assert TextFile().load_text("all", f) == "hello world"
    with pytest.raises(DataError, match="does not exist"):
        TextFile().load_text("all", tmp_path / "nope.txt")
    lm = tiny_model("llama")
    ctx = Context(seed=1)
    windows = ctx.calibration_batches(lm, 4, 32)
    assert tuple(windows.shape) == (4, 32)
    assert ctx.calibration_batches(lm, 4, 32) is windows  # cached
    import torch

    assert torch.equal(Context(seed=1).calibration_batches(lm, 4, 32), windows)


def test_the_context_data_folder_wins_over_the_environment(tmp_path, monkeypatch):
    import json

    from lmcompose.api import Context
    from lmcompose.compose import load_edits
    from lmcompose.data import wikitext_rows
    from lmcompose.datasets import WikiText2
    from lmcompose_counterfact.dataset import CounterFact

    monkeypatch.delenv("LMCOMPOSE_DATA_DIR", raising=False)
    bundled = load_edits("counterfact", seed=None)  # the bundled sample: no folder anywhere
    mine = tmp_path / "mine"
    (mine / "counterfact").mkdir(parents=True)
    (mine / "counterfact" / "counterfact.json").write_text(json.dumps(json.loads(CounterFact.sample.read_text())[:3]))
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("LMCOMPOSE_DATA_DIR", str(tmp_path / "empty"))  # set, but the run's folder wins
    got = load_edits("counterfact", seed=None, ctx=Context(data_dir=mine))
    assert len(got) < len(bundled) and [r.case_id for r in got] == [r.case_id for r in bundled[: len(got)]]
    assert load_edits("counterfact", seed=None) == bundled  # the environment's (empty) folder: the sample again
    (mine / "wikitext-2-raw").mkdir()
    (mine / "wikitext-2-raw" / "wiki.test.raw").write_text(" = A = \n\nword\n")
    corpus = WikiText2()
    corpus.data_dir = mine
    assert corpus.load_text("test") == "\n\n".join(wikitext_rows(" = A = \n\nword\n"))
