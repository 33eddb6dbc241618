from __future__ import annotations

import json

import pytest
from lmcompose_cli.main import app
from typer.testing import CliRunner

runner = CliRunner()


FAST = ["--ppl-tokens", "128", "--ppl-seqlen", "64"]


def invoke(*args):
    return runner.invoke(app, list(args))


def test_plugins_lists_builtins():
    res = invoke("plugins")
    assert res.exit_code == 0, res.output
    assert "builtin:interventions" in res.output and "intervention:magnitude" in res.output


def test_plugins_json():
    res = invoke("plugins", "--json")
    data = json.loads(res.output)
    core = next(d for d in data if d["name"] == "builtin:interventions")
    assert core["distribution"] == "lmcompose" and "intervention:rtn" in core["provides"]


@pytest.mark.parametrize(
    "kind,expect",
    [("interventions", "sparsity"), ("metrics", "perplexity"), ("datasets", "records"), ("architectures", "gpt_neox")],
)
def test_list(kind, expect):
    res = invoke("list", kind)
    assert res.exit_code == 0, res.output
    assert expect in res.output


def test_run_writes_results(tiny_folder, tmp_path):
    out = tmp_path / "run"
    res = invoke(
        "run",
        tiny_folder,
        "magnitude:sparsity=0.5",
        "rtn:bits=4,group_size=32",
        "--out",
        str(out),
        *FAST,
        "--metrics",
        "perplexity,avg_bits",
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["position"] for r in rows] == [0, 1, 2]
    assert [round(r["avg_bits"], 3) for r in rows] == [16.0, 8.5, 3.5]
    assert (out / "config.yaml").exists()
    assert "results" in res.output


def test_run_with_a_config_file_and_edits(tiny_folder, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        f"model: {tiny_folder}\nsteps: [magnitude:structure=2:4]\ndataset: records\nedits: 2\nmetrics: [edit]\n"
    )
    res = invoke("run", "-c", str(cfg), "--out", str(tmp_path / "r"))
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    assert rows[1]["edit_success"] is not None and rows[1]["strength"] == 0.5


@pytest.mark.parametrize(
    "args,message",
    [
        (["magnitud:sparsity=0.5"], "Did you mean 'magnitude'"),
        (["magnitude:sparsty=0.5"], "Did you mean 'sparsity'"),
        (["magnitude:sparsity=1.5"], "out of range"),
        (["rtn:bits=3.5"], "is not an integer"),
        (["magnitude", "--keep-compressed", "always"], "policy"),
        (["magnitude", "--dataset", "counterfakt"], "unknown dataset"),
    ],
)
def test_bad_input_is_one_message_and_exit_2(tiny_folder, tmp_path, args, message):
    out = tmp_path / "never"
    res = invoke("run", tiny_folder, *args, "--out", str(out))
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert not out.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["validate"], "Missing argument 'config'"),
        (["merge", "--out", "x"], "Missing argument"),
        (["bogus"], "No such command 'bogus'"),
        (["list", "bogus"], "No such command 'bogus'"),
        (["list"], "List what the installed plugins provide"),  # a group's help, as for `lmcompose` alone
        (["run", "--bogus-flag", "x"], "No such option: --bogus-flag"),
        (["run", "--threads", "abc", "x"], "Invalid value for '--threads'"),
    ],
)
def test_a_command_line_that_does_not_parse_is_a_usage_error_exit_2(tmp_path, args, message):
    res = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert res.exit_code == 2, res.output
    assert message in res.output and "Usage: lmcompose" in res.output
    assert "internal error" not in res.output and "Traceback" not in res.output


def test_missing_model_file(tmp_path):
    res = invoke("run", str(tmp_path / "missing.gguf"), "magnitude", "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_unreadable_config(tmp_path):
    cfg = tmp_path / "x.yaml"
    cfg.write_text("steps: [unclosed\n")
    res = invoke("run", "-c", str(cfg))
    assert res.exit_code == 2 and "not valid YAML" in res.output


def test_out_folder_with_another_run_is_refused(tiny_folder, tmp_path):
    out = tmp_path / "r"
    assert invoke("run", tiny_folder, "rtn:bits=8", "--out", str(out), *FAST, "--metrics", "avg_bits").exit_code == 0
    res = invoke("run", tiny_folder, "rtn:bits=4", "--out", str(out), *FAST, "--metrics", "avg_bits")
    assert res.exit_code == 2 and "already holds another run" in res.output
    assert len((out / "results.jsonl").read_text().splitlines()) == 2


def test_validate(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("model: smollm2-135m\nsteps: [magnitude:sparsity=0.5, rtn:bits=4]\n")
    res = invoke("validate", str(good))
    assert res.exit_code == 0 and "2 step(s)" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: smollm2-135m\nsteps: [rtn:bits=12]\n")
    res = invoke("validate", str(bad))
    assert res.exit_code == 2 and "bits=12" in res.output


def test_data_dir_must_exist(tmp_path):
    res = invoke("--data-dir", str(tmp_path / "nope"), "plugins")
    assert res.exit_code == 2 and "not a folder" in res.output


def _data_folder(folder, text):
    (folder / "wikitext-2-raw").mkdir(parents=True)
    for name in ("wiki.test.raw", "wiki.train.raw", "wiki.valid.raw"):
        (folder / "wikitext-2-raw" / name).write_text(text)
    return folder


def test_data_dir_reaches_the_run_through_its_context_not_the_environment(tiny_folder, tmp_path, monkeypatch):
    import os

    import yaml

    monkeypatch.delenv("LMCOMPOSE_DATA_DIR", raising=False)
    data = _data_folder(tmp_path / "data", " = Valkyria = \n\n" + "The game is a tactical role playing game .\n" * 300)
    for command in (
        ["run", tiny_folder, "magnitude:sparsity=0.5"],
        ["sweep", tiny_folder, "magnitude", "--vary", "magnitude.sparsity=0.25,0.5", "--no-plots"],
    ):
        out = tmp_path / command[0]
        res = invoke("--data-dir", str(data), *command, "--out", str(out), *FAST, "--metrics", "perplexity")
        assert res.exit_code == 0, res.output
        assert "LMCOMPOSE_DATA_DIR" not in os.environ  # nothing outlives the command
        config = yaml.safe_load((out / "config.yaml").read_text())
        assert config["data_dir"] == str(data.resolve())
        assert config["inputs"]["corpora"]["test"].startswith("wiki.test.raw:"), config["inputs"]["corpora"]
    # the same run without the folder reads the bundled sample (the context was the only source)
    res = invoke(
        "run", tiny_folder, "magnitude:sparsity=0.5", "--out", str(tmp_path / "plain"), *FAST, "--metrics", "perplexity"
    )
    assert res.exit_code == 0, res.output
    config = yaml.safe_load((tmp_path / "plain" / "config.yaml").read_text())
    assert config["inputs"]["corpora"]["test"] == "bundled:sample_text.txt"


MEMIT = "memit:layers=0+1,context_templates=0,stats_samples=8,stats_seqlen=64,v_num_grad_steps=5"
# (what is missing, the study's or the run config's keys, the message); {tmp}: a scratch folder
MISSING = [
    ("dataset source", {"datasets": [{"name": "counterfact", "source": "{tmp}/no.json"}]}, "no.json does not exist"),
    ("corpus file", {"budgets": {"ppl_corpus": "{tmp}/own.txt"}}, "own.txt: no such file"),
    ("model folder", {"model": "{tmp}/no-model"}, "no-model' does not exist"),
    ("data folder", {"env": "{tmp}/no-data"}, "LMCOMPOSE_DATA_DIR="),
]
RUN_MISSING = [
    ("dataset source", {"dataset": "counterfact", "dataset_source": "{tmp}/no.json"}, "no.json does not exist"),
    ("corpus file", {"calibration_corpus": "{tmp}/own.txt"}, "own.txt: no such file"),
    ("model folder", {"model": "{tmp}/no-model"}, "no-model' does not exist"),
    ("data folder", {"data_dir": "{tmp}/no-data"}, "data folder"),
]


def _fill(value, tmp):
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, list):
        return [_fill(v, tmp) for v in value]
    return {k: _fill(v, tmp) for k, v in value.items()} if isinstance(value, dict) else value


@pytest.mark.parametrize(
    "kind,what,over,message",
    [("study", *m) for m in MISSING] + [("run", *m) for m in RUN_MISSING],
    ids=[f"study-{m[0]}" for m in MISSING] + [f"run-{m[0]}" for m in RUN_MISSING],
)
def test_validate_refuses_what_the_command_refuses(tiny_folder, tmp_path, kind, what, over, message):
    """A file or folder the config names that is not there: `validate` says so, as the command would."""
    import yaml

    over = _fill(over, tmp_path)
    env = {"LMCOMPOSE_DATA_DIR": over.pop("env")} if "env" in over else {}
    if kind == "study":
        data = {
            "model": tiny_folder,
            "datasets": [{"name": "counterfact", "source": "sample"}],
            "editors": [MEMIT],
            "compressors": [{"step": "magnitude", "vary": {"sparsity": [0.5]}}],
            "edits": 2,
            "metrics": ["perplexity"],
            "budgets": {"ppl_tokens": 128, "ppl_seqlen": 64},
        }
        command = ["study"]
    else:
        data = {"model": tiny_folder, "steps": ["magnitude"], "metrics": ["perplexity"]}
        command = ["run", "-c"]
    file = tmp_path / "config.yaml"
    file.write_text(yaml.safe_dump(data))
    assert runner.invoke(app, ["validate", str(file)]).exit_code == 0  # the same config without the mistake
    file.write_text(yaml.safe_dump({**data, **over}))
    checked = runner.invoke(app, ["validate", str(file)], env=env)
    ran = runner.invoke(app, [*command, str(file), "--out", str(tmp_path / "out")], env=env)
    for res in (checked, ran):
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "out").exists()
