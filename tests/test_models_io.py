"""Models in and out: saving results (--save-model, --save-cells), choosing the text corpora
and edit data (files, hub ids, never a silent fallback), loading options (dtype auto,
device_map, max_memory, revision) and clear device errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lmcompose.api import Context
from lmcompose.compose import build_metrics
from lmcompose.errors import ConfigError, DataError, ModelLoadError, UsageError
from lmcompose.models.tiny import tiny_model
from typer.testing import CliRunner

runner = CliRunner()
PPL = {"perplexity": {"seqlen": 64, "max_tokens": 512}}


def app():
    from lmcompose_cli.main import app as cli

    return cli


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "llama"
    tiny_model("llama").save(path)
    return path


def ppl(lm) -> float:
    return build_metrics(["perplexity"], PPL)[0].compute(lm, Context())["perplexity"]


def rows(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]


# -- save -----------------------------------------------------------------------------


def test_saved_model_loads_with_plain_transformers_and_keeps_its_compression(base, tmp_path):
    from lmcompose.models.handle import LM
    from lmcompose.models.loading import load_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = runner.invoke(
        app(),
        [
            "run",
            str(base),
            "magnitude:sparsity=0.5",
            "rtn:bits=4,group_size=32",
            "--metrics",
            "perplexity",
            "--ppl-tokens",
            "512",
            "--ppl-seqlen",
            "64",
            "--out",
            str(tmp_path / "run"),
            "--save-model",
            str(tmp_path / "saved"),
        ],
    )
    assert res.exit_code == 0, res.output
    saved = tmp_path / "saved"
    assert "lmcompose" not in (saved / "config.json").read_text()  # nothing in it needs lmcompose
    plain = AutoModelForCausalLM.from_pretrained(saved).eval()
    lm = LM(plain, AutoTokenizer.from_pretrained(saved), tiny_model("llama").arch)
    last = rows(tmp_path / "run")[-1]
    assert ppl(lm) == pytest.approx(last["perplexity"], rel=1e-6)
    meta = json.loads((saved / "lmcompose_model.json").read_text())
    assert meta["order"] == ["magnitude", "rtn"] and meta["run_id"] == last["run_id"]
    again = load_model(str(saved))  # lmcompose's loader restores masks and grids: project() works
    name = "model.layers.0.mlp.down_proj"
    state = again.compression[name]
    assert state.keep_mask is not None and state.quant is not None and state.quant.bits == 4
    keep = state.keep_mask
    with torch.no_grad():
        again.weight(name).add_(0.01)
    again.rezero({name: keep})
    assert bool((again.weight(name)[~keep] == 0).all())


def test_a_non_empty_save_folder_is_refused_unless_overwrite(base, tmp_path):
    target = tmp_path / "keep"
    target.mkdir()
    (target / "mine.txt").write_text("precious")
    args = ["run", str(base), "magnitude", "--metrics", "avg_bits", "--save-model", str(target)]
    res = runner.invoke(app(), args)
    assert res.exit_code == 2 and "exists and is not empty" in res.output and "--overwrite" in res.output
    assert (target / "mine.txt").read_text() == "precious"
    res = runner.invoke(app(), [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert not (target / "mine.txt").exists() and (target / "config.json").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_finished_run_saves_its_model_without_writing_rows_again(base, tmp_path):
    args = ["run", str(base), "magnitude", "--metrics", "avg_bits", "--out", str(tmp_path / "run")]
    assert runner.invoke(app(), args).exit_code == 0
    n = len(rows(tmp_path / "run"))
    res = runner.invoke(app(), [*args, "--save-model", str(tmp_path / "later")])
    assert res.exit_code == 0, res.output
    assert len(rows(tmp_path / "run")) == n and (tmp_path / "later" / "lmcompose_model.json").exists()


def test_sweep_saves_the_cells_its_pattern_names(base, tmp_path):
    from transformers import AutoModelForCausalLM

    args = [
        "sweep",
        str(base),
        "magnitude",
        "rtn:group_size=32",
        "--vary",
        "rtn.bits=8,4",
        "--metrics",
        "perplexity",
        "--ppl-tokens",
        "512",
        "--ppl-seqlen",
        "64",
        "--out",
        str(tmp_path / "sw"),
        "--no-plots",
    ]
    res = runner.invoke(app(), [*args, "--save-cells", "nothing>*"])
    assert res.exit_code == 2 and "matches none of the 4 cells" in res.output
    assert not (tmp_path / "sw").exists()
    assert runner.invoke(app(), [*args, "--save-cells", "rtn>magnitude|*"]).exit_code == 0
    saved = sorted(p.name for p in (tmp_path / "sw" / "models").iterdir())
    assert saved == ["rtn-magnitude__4__r0", "rtn-magnitude__8__r0"]
    n = len(rows(tmp_path / "sw"))
    # the sweep is finished: asking for more cells recomputes only those models
    assert runner.invoke(app(), [*args, "--save-cells", "all"]).exit_code == 0
    assert len(rows(tmp_path / "sw")) == n and len(list((tmp_path / "sw" / "models").iterdir())) == 4
    final = {r["cell"]: r for r in rows(tmp_path / "sw") if r["position"] == r["last_position"]}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sw" / "models" / "magnitude-rtn__4__r0").eval()
    from lmcompose.models.handle import LM

    lm = LM(model, tiny_model("llama").tokenizer, tiny_model("llama").arch)
    assert ppl(lm) == pytest.approx(final["magnitude>rtn|4|r0"]["perplexity"], rel=1e-6)


def test_study_saves_matching_cells(base, tmp_path):
    from lmcompose.studies import Study
    from lmcompose.studies.runner import run_study

    data = {
        "name": "save",
        "model": str(base),
        "datasets": [{"name": "records"}],
        "editors": ["memit:layers=0+1,context_templates=0,stats_samples=8,stats_seqlen=64,v_num_grad_steps=3"],
        "compressors": [{"step": "magnitude", "vary": {"sparsity": [0.25, 0.5]}}],
        "edits": 2,
        "metrics": ["perplexity"],
        "budgets": {"ppl_tokens": 128, "ppl_seqlen": 64},
    }
    with pytest.raises(ConfigError, match="matches none"):
        run_study(Study.from_mapping(data), out=tmp_path / "st", threads=1, save_cells="nope*", report=False)
    assert not (tmp_path / "st").exists()
    run_study(
        Study.from_mapping(data), out=tmp_path / "st", threads=1, save_cells="*|memit>magnitude|0.5|*", report=False
    )
    saved = list((tmp_path / "st" / "models").iterdir())
    assert len(saved) == 1 and "memit-magnitude__0.5" in saved[0].name
    assert json.loads((saved[0] / "lmcompose_model.json").read_text())["dataset"] == "records"


# -- corpora ---------------------------------------------------------------------------


def test_corpus_specs_parse_and_refuse_bad_shapes():
    from lmcompose.corpora import parse_corpus

    assert parse_corpus(None).explicit is False
    assert str(parse_corpus("hub:allenai/c4?config=en&split=validation")) == "hub:allenai/c4?config=en&split=validation"
    assert parse_corpus("wikitext2").kind == "wikitext2" and parse_corpus("sample").kind == "sample"
    with pytest.raises(ConfigError, match="unknown option 'splt'"):
        parse_corpus("hub:x/y?splt=train")
    with pytest.raises(ConfigError, match="name the dataset after hub:"):
        parse_corpus("hub:")
    with pytest.raises(ConfigError, match="rows=x is not a whole number"):
        parse_corpus("hub:a/b?rows=x")
    with pytest.raises(ConfigError, match="ppl_corpus: expected wikitext2"):
        parse_corpus(["a"], "ppl_corpus")


def test_a_text_file_corpus_is_used_and_bad_files_stop_before_anything_is_written(base, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    args = ["run", str(base), "magnitude", "--metrics", "perplexity", "--ppl-tokens", "256", "--ppl-seqlen", "32"]
    res = runner.invoke(app(), [*args, "--ppl-corpus", str(text), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    row = rows(tmp_path / "run")[0]
    assert row["ppl_corpus"] == f"file:{text.resolve()}" and not any("bundled" in n for n in row["notes"])
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "corpus.txt" in cfg  # recorded: a resume onto other text is refused
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02text")
    for bad, match in (("empty.txt", "the file is empty"), ("bin.txt", "a binary file"), ("none.txt", "no such file")):
        res = runner.invoke(app(), [*args, "--ppl-corpus", str(tmp_path / bad), "--out", str(tmp_path / f"r-{bad}")])
        assert res.exit_code == 2 and match in res.output, res.output
        assert not (tmp_path / f"r-{bad}").exists()
    res = runner.invoke(app(), [*args, "--calibration-corpus", str(tmp_path / "bin.txt")])
    assert res.exit_code == 2 and "calibration corpus" in res.output


def test_hub_corpora_through_datasets(tmp_path, monkeypatch):
    from lmcompose.corpora import load_corpus, parse_corpus

    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"body": f"row {i} of text"}) for i in range(10)))
    text, where = load_corpus(parse_corpus(f"hub:{folder}?field=body"), "calibration")
    assert text.startswith("row 0 of text\n\nrow 1") and where.startswith(f"hub:{folder}/train")
    text, _ = load_corpus(parse_corpus(f"hub:{folder}?field=body&rows=3"), "calibration")
    assert text == "row 0 of text\n\nrow 1 of text\n\nrow 2 of text"
    text, _ = load_corpus(parse_corpus(f"hub:{folder}?field=body&data_files=train.jsonl&split=train"), "test")
    assert text.count("row ") == 10
    with pytest.raises(DataError, match="has no column 'text'"):
        load_corpus(parse_corpus(f"hub:{folder}"), "calibration")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="offline .* not in the datasets cache"):
        load_corpus(parse_corpus("hub:nobody-here/no-such-corpus"), "test")


def test_asked_for_wikitext_never_falls_back_to_the_sample(monkeypatch, tmp_path):
    from lmcompose.corpora import load_corpus, parse_corpus

    monkeypatch.setenv("LMCOMPOSE_DATA_DIR", str(tmp_path))  # a folder without wikitext-2-raw/
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="wikitext2: the test split"):
        load_corpus(parse_corpus("wikitext2"), "test")
    ctx = Context()
    _text, where = load_corpus(parse_corpus(None), "test", ctx)  # the default: the sample, said in a note
    assert where == "bundled:sample_text.txt" and any("bundled sample" in n for n in ctx.notes)


def test_edit_dataset_from_a_hub_id(tmp_path, monkeypatch):
    from lmcompose.compose import load_edits
    from lmcompose.data import sample_path

    monkeypatch.setenv("LMCOMPOSE_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "edits"
    folder.mkdir()
    (folder / "train.jsonl").write_text(sample_path("sample_edits.jsonl").read_text())
    got = load_edits("records", f"hub:{folder}", limit=3, seed=0)
    assert len(got) == 3 and list((tmp_path / "cache" / "datasets" / "records").glob("hub-*.jsonl"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="cannot be loaded .*offline"):
        load_edits("records", "hub:nobody-here/no-such-edits", limit=3)


# -- loading options and devices -------------------------------------------------------


def test_device_errors_are_one_message(base, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for args, match in (
        (["--device", "cuda"], "CPU-only build"),
        (["--device", "tpu"], "is not a device"),
        (["--device-map", "cuda:1"], "--device-map cuda:1"),
        (["--device-map", "everywhere"], "is not a placement"),
        (["--max-memory", "0=1GiB"], "needs device_map"),
        (["--device-map", "auto", "--max-memory", "gpu0=lots"], "write DEVICE=SIZE"),
    ):
        res = runner.invoke(
            app(), ["run", str(base), "magnitude", "--metrics", "avg_bits", "--out", str(tmp_path / "r"), *args]
        )
        assert res.exit_code == 2 and match in res.output, (args, res.output)
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) <= 2
    assert not (tmp_path / "r").exists()
    (tmp_path / "cfg.yaml").write_text(f"model: {base}\nsteps: [magnitude]\ndevice: cuda\n")
    res = runner.invoke(app(), ["validate", str(tmp_path / "cfg.yaml")])
    assert res.exit_code == 2 and "CPU-only build" in res.output


def test_dtype_auto_and_device_map_load_the_same_numbers(base, tmp_path, monkeypatch):
    import transformers
    from lmcompose.models.loading import load_model, native_bf16, resolve_dtype

    ref = load_model(str(base))
    seen = {}
    original = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    auto = load_model(str(base), dtype="auto", device_map="auto", max_memory="cpu=2GiB")
    assert (
        seen["device_map"] == "auto"
        and seen["max_memory"] in ({"cpu": "2GiB"}, {"cpu": 2 << 30})
        and seen["dtype"] == torch.float32
    )
    assert auto.model.dtype == torch.float32 and ppl(auto) == ppl(ref)
    half = tiny_model("llama")
    half.model.to(torch.bfloat16)
    half.save(tmp_path / "bf16")

    class Notes:
        seen: list[str] = []

        def note(self, m):
            self.seen.append(m)

    notes = Notes()
    got = resolve_dtype("auto", "cpu", tmp_path / "bf16", notes)
    assert got == ("bfloat16" if native_bf16() else "float32")
    if not native_bf16():
        assert "no native bf16" in notes.seen[0]
    assert resolve_dtype("auto", "cuda", tmp_path / "bf16") == "bfloat16"
    with pytest.raises(ModelLoadError, match="--revision main: .* is a local model"):
        load_model(str(base), revision="main")


def test_default_dtype_keeps_cpu_run_ids():
    from lmcompose.compose import RunSettings

    a = RunSettings(model="m", steps=["magnitude"])
    b = RunSettings(model="m", steps=["magnitude"], dtype="float32")
    assert a.run_id() == b.run_id() and a.resolved()["dtype"] == "float32"
    assert RunSettings(model="m", steps=["magnitude"], device="cuda").resolved()["dtype"] == "auto"
    with pytest.raises(UsageError):
        RunSettings(model="m", steps=["magnitude"], dtype="int3").validate()


# -- offloaded models: one layer onloaded at a time -------------------------------------

OFFLOAD = {"device_map": "auto", "max_memory": "cpu=200KB"}  # the tiny model's layers go to disk


@pytest.mark.parametrize(
    "step",
    [
        "magnitude:sparsity=0.5",
        "rtn:bits=4,group_size=32",
        "sparsegpt:n_samples=4,seqlen=32",
        "wanda:n_samples=4,seqlen=32",
        "gptq:bits=4,group_size=32,n_samples=4,seqlen=32,true_sequential=true",
        "awq:bits=4,group_size=32,n_samples=4,seqlen=32,n_grid=4",
        "memit:layers=0+1,context_templates=0,stats_samples=8,stats_seqlen=64,v_num_grad_steps=3",
        # v* through layer 1
        "memit:layers=0,context_templates=2,template_tokens=4,stats_samples=8,stats_seqlen=64,v_num_grad_steps=3",
    ],
)
def test_an_offloaded_model_gives_the_in_memory_numbers(base, step, tmp_path, monkeypatch):
    from lmcompose.compose import build_intervention, load_edits, parse_step
    from lmcompose.models.loading import load_model

    monkeypatch.setenv("LMCOMPOSE_CACHE_DIR", str(tmp_path / "cache"))  # MEMIT's statistics computed by each
    edits = load_edits("records", None, limit=2, seed=0)
    metrics = build_metrics(["perplexity", "avg_bits", "edit"], PPL)
    out = []
    for placement in ({}, OFFLOAD):
        lm = load_model(str(base), **placement)
        assert lm.offloaded == bool(placement)
        ctx = Context(edits=list(edits), calibration_samples=4, calibration_seqlen=32)
        build_intervention(parse_step(step)).apply(lm, ctx)
        values = {k: v for m in metrics for k, v in m.compute(lm, ctx).items() if isinstance(v, float)}
        out.append((lm.fingerprint(), values))
    assert out[0] == out[1]


def test_a_sweep_on_an_offloaded_model_matches_in_memory(base, tmp_path):
    args = [
        "sweep",
        str(base),
        "magnitude",
        "rtn:group_size=32",
        "--vary",
        "rtn.bits=8,4",
        "--metrics",
        "perplexity,avg_bits",
        "--ppl-tokens",
        "256",
        "--ppl-seqlen",
        "64",
        "--topk",
        "0",
        "--no-plots",
    ]
    assert runner.invoke(app(), [*args, "--out", str(tmp_path / "mem")]).exit_code == 0
    res = runner.invoke(
        app(),
        [
            *args,
            "--out",
            str(tmp_path / "off"),
            "--device-map",
            "auto",
            "--max-memory",
            "cpu=200KB",
            "--snapshots",
            "disk",
        ],
    )
    assert res.exit_code == 0, res.output
    key = ("cell", "position", "perplexity", "avg_bits", "sparsity")
    assert sorted(tuple(r.get(k) for k in key) for r in rows(tmp_path / "mem")) == sorted(
        tuple(r.get(k) for k in key) for r in rows(tmp_path / "off")
    )


def test_an_offloaded_layer_is_refused_outside_onloaded(base):
    from lmcompose.models.loading import load_model
    from lmcompose.models.offload import OffloadError

    lm = load_model(str(base), **OFFLOAD)
    name = "model.layers.1.mlp.down_proj"
    with pytest.raises(OffloadError, match="must hold `with lm.onloaded"):
        lm.weight(name)
    with lm.onloaded(name):
        lm.weight(name).zero_()
    with lm.onloaded(name, write=False):
        assert float(lm.weight(name).abs().sum()) == 0.0  # the change was stored back


def test_the_offload_folder_goes_with_the_model(base, tmp_path, monkeypatch):
    import gc

    from lmcompose.models.loading import load_model

    monkeypatch.setenv("LMCOMPOSE_CACHE_DIR", str(tmp_path / "cache"))
    from lmcompose.compose import build_intervention, parse_step

    lm = load_model(str(base), **OFFLOAD)
    folders = list((tmp_path / "cache").glob("lmcompose-offload-*"))
    assert len(folders) == 1
    build_intervention(parse_step("magnitude:sparsity=0.5")).apply(lm, Context())
    assert any(folders[0].iterdir())  # the changed layers are written back there (the rest stays in the safetensors)
    del lm
    gc.collect()
    assert not folders[0].exists()
    with pytest.raises(ModelLoadError):
        load_model(str(base), device_map="auto", max_memory="cpu=200KB", revision="main")  # refused before loading
    assert not list((tmp_path / "cache").glob("lmcompose-offload-*"))
