"""Reliability: a resumed, shared or interrupted run never mixes data; every bad input is one
message; downloads and model folders are trusted only when they should be.

One test (or a parametrized table) per class of problem: inputs that change under a resume,
two processes on one folder, the download cache, config shapes, prompts beyond the model's
positions, non-finite values, tracebacks turned into messages, remote code, and the small
surprises (each rejected). The soak test and the fuzz tests are at the end.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from lmcompose import Intervention, hookimpl
from lmcompose.api import EditRecord
from lmcompose.compose import RunSettings, compose, load_edits
from lmcompose.engine import RunFolder
from lmcompose.engine.run_folder import WRITTEN_ENTRIES
from lmcompose.errors import ConfigError, DataError, LMComposeError, ModelLoadError, UsageError
from lmcompose.models.tiny import tiny_model
from lmcompose.results import read_rows
from lmcompose.sweep import sweep
from lmcompose_cli.main import app
from typer.testing import CliRunner

FAST = ["--ppl-tokens", "128", "--ppl-seqlen", "64", "--metrics", "perplexity,avg_bits"]


def invoke(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300", **(env or {})})


def one_message(res, code=2):
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output, res.output
    return res.output


# --------------------------------------------------------------------------------------
# silent wrong data
# --------------------------------------------------------------------------------------


def _wikitext(folder: Path, text: str) -> Path:
    (folder / "wikitext-2-raw").mkdir(parents=True)
    for name in ("wiki.test.raw", "wiki.train.raw", "wiki.valid.raw"):
        (folder / "wikitext-2-raw" / name).write_text(text)
    return folder


def test_a_resume_onto_other_text_or_other_weights_is_refused(tiny_folder, tmp_path, monkeypatch):
    def swept(model, out):
        return invoke(
            "sweep",
            model,
            "magnitude",
            "rtn:group_size=32",
            "--vary",
            "rtn.bits=8,4",
            "--out",
            out,
            "--no-plots",
            *FAST,
        )

    data = _wikitext(tmp_path / "data", " = Valkyria = \n\n" + "The game is a tactical role playing game .\n" * 400)
    monkeypatch.setenv("LMCOMPOSE_DATA_DIR", str(data))
    assert swept(tiny_folder, tmp_path / "run").exit_code == 0
    monkeypatch.delenv("LMCOMPOSE_DATA_DIR")
    out = one_message(swept(tiny_folder, tmp_path / "run"))  # the resume would read the bundled sample text
    assert "inputs of run" in out and "corpora" in out and "bundled:sample_text.txt" in out
    monkeypatch.setenv("LMCOMPOSE_DATA_DIR", str(data))
    other = tmp_path / "other-model"
    shutil.copytree(tiny_folder, other)
    assert swept(other, tmp_path / "run2").exit_code == 0
    tiny_model("llama", seed=1).model.save_pretrained(other)  # the folder's weights change between runs
    out = one_message(swept(other, tmp_path / "run2"))
    assert "model_fingerprint" in out and "would mix data" in out


def test_a_plugin_installed_since_does_not_refuse_a_resume_but_a_changed_version_does(tmp_path):
    from lmcompose.engine.run_folder import RunFolder
    from lmcompose.errors import UsageError

    inputs = {"model_fingerprint": "f", "versions": {"lmcompose": "0.2.0", "lmcompose-memit": "0.2.0"}}
    with RunFolder(tmp_path, "r1", "run") as folder:
        folder.write_config(inputs=inputs)
    added = {**inputs, "versions": {**inputs["versions"], "lmcompose-lmeval": "0.1.0"}}  # a plugin installed since
    with RunFolder(tmp_path, "r1", "run") as folder:
        folder.write_config(inputs=added)
    changed = {**inputs, "versions": {**inputs["versions"], "lmcompose-memit": "0.3.0"}}
    with (
        pytest.raises(UsageError, match=r"versions.lmcompose-memit: \"0.2.0\" → \"0.3.0\""),
        RunFolder(tmp_path, "r1", "run") as folder,
    ):
        folder.write_config(inputs=changed)


def test_a_run_records_and_checks_only_the_plugins_it_uses(tiny_folder, tmp_path):
    """Upgrading a plugin the run never calls (here the unlearn plugin, under a sweep of
    magnitude pruning) leaves a resume alone; the versions recorded are the core's and
    those of the steps', metrics' and datasets' distributions."""
    import yaml

    def swept(model, out):
        return invoke("sweep", model, "magnitude", "--vary", "magnitude.sparsity=0.25,0.5", "--out", out, *FAST)

    out = tmp_path / "run"
    assert swept(tiny_folder, out).exit_code == 0
    cfg_path = out / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    recorded = cfg["inputs"]["versions"]
    assert {"python", "torch", "transformers", "pluggy", "lmcompose"} <= set(recorded)
    assert "lmcompose-unlearn" not in recorded and "lmcompose-memit" not in recorded
    # a folder written before: every installed plugin recorded, an unused one since upgraded
    cfg["inputs"]["versions"] = {**recorded, "lmcompose-unlearn": "0.0.1"}
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert swept(tiny_folder, out).exit_code == 0


def test_a_second_process_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from lmcompose.engine import RunFolder; "
            f"f = RunFolder({str(tmp_path)!r}, 'r1', 'sweep').open(); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=rf"in use by another lmcompose process \(pid {holder.pid}\)"):
            RunFolder(tmp_path, "r1", "sweep").open()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunFolder(tmp_path, "r1", "sweep") as folder:  # the dead process's lock is gone with it
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
        assert folder.done() == set()


def test_two_identical_sweeps_started_together_write_each_row_once(tiny_folder, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "lmcompose_cli.main",
        "sweep",
        str(tiny_folder),
        "magnitude",
        "rtn:group_size=32",
        "--vary",
        "rtn.bits=8,4",
        "--out",
        str(tmp_path / "run"),
        "--no-plots",
        *FAST,
    ]
    from lmcompose.engine.run_folder import LOCK_FILE

    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = tmp_path / "run" / LOCK_FILE
    deadline = time.time() + 120
    while first.poll() is None and time.time() < deadline:  # the second starts once the first holds the folder
        if lock.exists() and lock.read_text().strip() == str(first.pid):
            break
        time.sleep(0.05)
    procs = [first, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    # the second is refused while the first holds the folder; on a slow machine the first may
    # finish before the second starts, which then resumes with nothing to do. Never both writing.
    assert codes in ([0, 2], [0, 0]), outs
    if codes == [0, 2]:
        assert any("in use by another lmcompose process" in o for o in outs)
    rows = read_rows(tmp_path / "run" / "results.jsonl")
    assert len({(r["cell"], r["position"]) for r in rows}) == len(rows) == 12


def test_the_locality_reference_is_each_batchs_own_whatever_its_case_ids():
    """Two replicates whose records carry the same case ids once shared the first one's base
    reference: replicate 1's base model then drifted from itself."""
    from lmcompose.api import LocalityPrompt

    def batch(places):
        return [
            EditRecord(
                str(i), "Rome", "Rome is in", "Spain", "Italy", locality=[LocalityPrompt(f"{p} lies in", "Gaul")]
            )
            for i, p in enumerate(places)
        ]

    rows = sweep(
        tiny_model("llama"),
        ["magnitude"],
        vary="magnitude.sparsity=0.5",
        edits=[batch(["Paris", "Lyon"]), batch(["Berlin", "Bonn"])],
        replicates=2,
        metrics=["edit"],
    )
    base = {r["replicate"]: r["locality_preservation"] for r in rows if r["position"] == 0}
    assert base == {0: 1.0, 1: 1.0}


def _counterfact(tmp_path, change):
    from importlib import resources

    records = json.loads(
        resources.files("lmcompose_counterfact").joinpath("sample", "counterfact_sample.json").read_text()
    )
    change(records)
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize(
    "change,match",
    [
        (
            lambda rs: rs[2].update(case_id=None),
            r"record 2: field 'case_id' is nothing \(null\); give the record an id",
        ),
        (
            lambda rs: rs[1]["requested_rewrite"].update(prompt="The {} and {} are"),
            r"record 1 .*has 2 '\{\}' placeholders; the subject fills exactly one",
        ),
        (
            lambda rs: rs[4]["requested_rewrite"].update(target_new=rs[4]["requested_rewrite"]["target_true"]),
            r"record 4 .*equals target_true: the edit would change nothing",
        ),
    ],
)
def test_edit_records_that_would_be_read_otherwise_than_meant_are_refused(tmp_path, change, match):
    path = _counterfact(tmp_path, change)
    with pytest.raises(DataError, match=match + r".*--skip-invalid"):
        load_edits("counterfact", path)
    assert len(load_edits("counterfact", path, skip_invalid=True)) == 9


def test_case_ids_given_to_two_records_are_noted(tmp_path):
    """Kept (edits are told apart by content: the locality reference above), but said."""
    from lmcompose.api import Context

    path = _counterfact(tmp_path, lambda rs: rs[3].update(case_id=rs[0]["case_id"]))
    ctx = Context()
    assert len(load_edits("counterfact", path, ctx=ctx)) == 10
    assert any("case_id(s) of" in n and "records 0, 3" in n and "its own case_id" in n for n in ctx.notes), ctx.notes


def test_zsres_own_no_op_edits_are_kept_with_a_note(tmp_path):
    from lmcompose.api import Context

    record = {
        "subject": "Rome",
        "src": "Where is Rome?",
        "answers": ["Italy"],
        "alt": "Italy",
        "loc": "nq q",
        "loc_ans": "a",
    }
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([record, {**record, "alt": "Spain"}]))
    ctx = Context()
    assert len(load_edits("zsre", path, ctx=ctx)) == 2
    assert any("1 of the 2 edit requests ask for a target_new equal to their target_true" in n for n in ctx.notes)


def test_a_model_saved_over_or_around_a_run_folder_is_refused_before_loading(tiny_folder, tmp_path):
    """The save target replaced the run's config.yaml and results.jsonl: refused by path before
    the model loads (the model named here does not exist), and by content (a run's results)."""
    missing = tmp_path / "no-model"
    for save, said in [
        ("r/x", "is the run folder {run} (--out): saving there would replace its config.yaml and results.jsonl"),
        ("r", "holds the run folder {run} (--out): saving there would delete its config.yaml and results.jsonl"),
        ("r/x/model", "lies inside the run folder {run} (--out)"),
    ]:
        res = invoke(
            "run", missing, "magnitude", "--out", tmp_path / "r/x", "--save-model", tmp_path / save, "--overwrite"
        )
        text = one_message(res)
        assert f"--save-model {tmp_path / save} " + said.format(run=tmp_path / "r/x") in text, text
        assert "could not load model" not in text and not (tmp_path / "r").exists()
    with pytest.raises(UsageError, match="is the run folder"):
        compose(tiny_model("llama"), ["magnitude"], metrics=["avg_bits"], out=tmp_path / "p", save_model=tmp_path / "p")
    assert not (tmp_path / "p").exists()
    # another run's folder is no model folder to replace, with or without --overwrite
    assert invoke("run", tiny_folder, "magnitude", "--out", tmp_path / "done", *FAST).exit_code == 0
    before = (tmp_path / "done" / "results.jsonl").read_text()
    out = one_message(invoke("run", missing, "magnitude", "--save-model", tmp_path / "done", "--overwrite"))
    assert "holds the results of a run" in out and "never a run folder" in out
    assert (tmp_path / "done" / "results.jsonl").read_text() == before
    # --save-cells writes OUT/models: a link from there back to the run folder is refused
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "models").symlink_to(tmp_path / "sw")
    sweep_args = ["sweep", missing, "magnitude", "--vary", "magnitude.sparsity=0.5", "--out", tmp_path / "sw"]
    out = one_message(invoke(*sweep_args, "--save-cells", "all", *FAST))
    assert "--save-cells' folder" in out and "is the run folder" in out


def test_an_export_over_its_own_run_is_refused(tiny_folder, tmp_path):
    pytest.importorskip("compressed_tensors")
    run = tmp_path / "run"
    assert invoke("run", tiny_folder, "magnitude", "--out", run, *FAST).exit_code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for target, said in [(run, "is the run folder"), (tmp_path, "holds the run folder")]:
        out = one_message(invoke("export", run, "--out", target, "--overwrite"))
        assert said in out and "RUN, the run exported" in out
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert invoke("export", run).exit_code == 0  # the default, RUN/export-compressed-tensors, lies inside it: fine


def test_a_packed_asymmetric_export_says_it_needs_dequantize(tmp_path):
    pytest.importorskip("compressed_tensors")
    from lmcompose.api import Progress
    from lmcompose.export import ExportWarning, export_compressed_tensors

    lm = tiny_model("llama")
    compose(lm, ["rtn:bits=4,group_size=32"], metrics=["avg_bits"])
    with pytest.warns(ExportWarning, match=r"asymmetric grid .*dequantize=True.*int-quantized"):
        export_compressed_tensors(lm, tmp_path / "a", quantization_format="pack-quantized")

    class Notes(Progress):
        said: list[str] = []

        def note(self, message):
            self.said.append(message)

    progress = Notes()
    export_compressed_tensors(lm, tmp_path / "b", quantization_format="int-quantized", progress=progress)
    assert progress.said == []  # the layout plain transformers loads: nothing to say
    export_compressed_tensors(lm, tmp_path / "c", quantization_format="pack-quantized", progress=progress)
    assert len(progress.said) == 1 and "cannot load a packed asymmetric zero point" in progress.said[0]


def test_a_study_step_that_sets_its_varied_field_is_refused_as_in_a_sweep():
    from lmcompose.studies import Study, StudyError

    base = {"name": "s", "model": "m", "datasets": ["records"], "editors": ["memit"], "edits": 2}
    for compressor, path in [
        ({"step": "magnitude:sparsity=0.3", "vary": {"sparsity": [0.5]}}, r"compressors\[0\]\.vary\.sparsity"),
        (
            {"steps": ["memit", "magnitude:sparsity=0.3"], "vary": {"magnitude.sparsity": [0.5]}},
            r"compressors\[0\]\.vary\.magnitude\.sparsity",
        ),
    ]:
        with pytest.raises(StudyError, match=path + r" varies 'sparsity', which the step also sets.*drop one"):
            Study.from_mapping({**base, "compressors": [compressor]})


def test_a_key_given_twice_in_a_yaml_file_is_refused(tmp_path):
    from lmcompose.results import read_yaml
    from lmcompose.studies import load_study

    study = tmp_path / "s.yaml"
    study.write_text(
        "name: s\nmodel: m\ndatasets: [records]\nedits: 2\neditors: [memit]\n"
        "compressors:\n  - {step: magnitude, vary: {sparsity: [0.5]}}\nedits: 3\n"
    )
    with pytest.raises(ConfigError, match=r"s.yaml: key 'edits' is given twice \(line 4 and line 8\).*keep one"):
        load_study(study)
    config = tmp_path / "c.yaml"
    config.write_text("model: m\nsteps: [magnitude]\nmetric_options:\n  edit: {scorer: f1, scorer: prob}\n")
    out = one_message(invoke("run", "-c", config, "--out", tmp_path / "run"))
    assert "key 'scorer' is given twice (line 4 and line 4)" in out and not (tmp_path / "run").exists()
    assert "key 'edits' is given twice" in one_message(invoke("validate", study))
    merged = tmp_path / "m.yaml"  # a merge key's values may be overridden: that is what it is for
    merged.write_text("a: &base {x: 1, y: 2}\nb: {<<: *base, y: 3}\n")
    assert read_yaml(merged) == {"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3}}


def test_nan_or_infinity_in_a_results_file_is_flagged_as_the_writer_flags_it(tiny_folder, tmp_path):
    from lmcompose.composability import composability, load_sweep

    out = tmp_path / "run"
    args = ["sweep", tiny_folder, "magnitude", "rtn:group_size=32", "--vary", "rtn.bits=8,4", "--out", out]
    assert invoke(*args, "--no-plots", *FAST).exit_code == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    finals = [i for i, r in enumerate(rows) if r["position"] == r["last_position"]][:2]
    foreign, written = list(lines), list(lines)
    for i, value, flag in zip(finals, [float("nan"), float("inf")], ["nan", "inf"], strict=True):
        foreign[i] = json.dumps({**rows[i], "perplexity": value})  # NaN, Infinity: what another tool may write
        written[i] = json.dumps({**rows[i], "perplexity": None, "nonfinite": {"perplexity": flag}})
    (out / "results.jsonl").write_text("\n".join(foreign) + "\n")
    got = load_sweep(out)
    assert [got.rows[i]["nonfinite"] for i in finals] == [{"perplexity": "nan"}, {"perplexity": "inf"}]
    assert all(got.rows[i]["perplexity"] is None for i in finals)
    assert sum("perplexity not finite (NaN or Infinity" in n for n in got.notes) == 2
    (tmp_path / "w.jsonl").write_text("\n".join(written) + "\n")
    assert (
        composability(got).as_dict()["criteria"]
        == composability(load_sweep(tmp_path / "w.jsonl")).as_dict()["criteria"]
    )
    assert composability(load_sweep([json.loads(x) for x in lines[:1]] + got.rows[1:])).criteria  # rows given
    (out / "results.jsonl").write_text("\n".join(foreign) + "\n")
    text = one_message(invoke("report", out, "--no-plots"), 0)
    md = (out / "report.md").read_text()
    assert "not finite (NaN or Infinity" in text + md and not re.search(r"\b(nan|inf)\b", md), md


def test_shards_that_agree_merge_whatever_their_timings_and_one_split_is_required(tiny_folder, tmp_path):
    from lmcompose.composability import row_numbers
    from lmcompose.studies import Study
    from lmcompose.studies.runner import merge_studies, run_study

    memit = "memit:layers=0+1,context_templates=0,stats_samples=8,stats_seqlen=64,v_num_grad_steps=2"
    study = Study.from_mapping(
        {
            "name": "m",
            "model": str(tiny_folder),
            "datasets": ["records"],
            "editors": [memit],
            "compressors": [{"step": "magnitude", "vary": {"sparsity": [0.5]}}],
            "edits": 2,
            "metrics": ["avg_bits"],
        }
    )
    full = run_study(study, out=tmp_path / "full", threads=1, report=False).folder
    part = run_study(study, out=tmp_path / "s2", shard="2/2", threads=1, report=False).folder
    edited = [r for r in read_rows(part / "results.jsonl") if r["step"] and r["step"].get("name") == "memit"]
    assert edited and "vstar_s" in edited[0]["step_details"]  # computed again: other timings
    added, missing, _ = merge_studies([full, part], tmp_path / "merged", report=False)
    assert added == len(read_rows(full / "results.jsonl")) and not missing
    assert row_numbers({"a": 1, "step_details": {"stats_s": 1.0, "stats_cached": True, "x": 2}}) == {
        "a": 1,
        "step_details": {"x": 2},
    }
    other = tmp_path / "s1of3"
    shutil.copytree(part, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["shard"] = "1/3"
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UsageError, match=r"cut with different counts .*shard 2/2.*shard 1/3.*the same N"):
        merge_studies([part, other], tmp_path / "bad", report=False)
    assert not (tmp_path / "bad").exists()


class _Server(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        short = self.path.startswith("/short/")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) * (2 if short else 1)))
        self.end_headers()
        self.wfile.write(body)  # a server that closes early sends half of what it announced

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.setenv("LMCOMPOSE_CACHE_DIR", str(tmp_path / "cache"))
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", _Server.files
    finally:
        srv.shutdown()
        _Server.files.clear()


def _records(subject: str) -> bytes:
    rec = {
        "case_id": subject,
        "requested_rewrite": {
            "prompt": "{} is located in",
            "subject": subject,
            "target_new": {"str": "Rome"},
            "target_true": {"str": "Paris"},
        },
        "paraphrase_prompts": [f"Where is {subject}? It is in"],
        "neighborhood_prompts": ["The Louvre is in"],
    }
    return json.dumps([rec]).encode()


def test_the_download_cache_is_keyed_by_the_whole_url_and_never_keeps_a_short_body(server, tmp_path):
    import hashlib

    base, files = server
    files["/a/edits.json"] = _records("Eiffel Tower")
    files["/b/edits.json"] = _records("Big Ben")
    a = load_edits("counterfact", f"{base}/a/edits.json", seed=None)
    b = load_edits("counterfact", f"{base}/b/edits.json", seed=None)
    assert (a[0].subject, b[0].subject) == ("Eiffel Tower", "Big Ben")
    files["/short/edits.json"] = _records("Colosseum")
    with pytest.raises(DataError, match=r"stopped after .* bytes; nothing was cached"):
        load_edits("counterfact", f"{base}/short/edits.json")
    from lmcompose.edit_data import download_cache_path

    cache = tmp_path / "cache" / "datasets" / "counterfact"
    assert not download_cache_path(cache, f"{base}/short/edits.json").exists()
    assert download_cache_path(cache, f"{base}/a/edits.json").exists()
    assert not list(cache.glob(".download-*"))
    good = hashlib.sha256(files["/a/edits.json"]).hexdigest()
    assert load_edits("counterfact", f"{base}/a/edits.json#sha256={good}", seed=None)[0].subject == "Eiffel Tower"
    files["/c/edits.json"] = _records("Acropolis")
    with pytest.raises(DataError, match="expected " + "0" * 64):
        load_edits("counterfact", f"{base}/c/edits.json#sha256={'0' * 64}")
    with pytest.raises(DataError, match="sha256=<64 hex digits>"):
        load_edits("counterfact", f"{base}/c/edits.json#md5=abc")
    cached = next(p for p in cache.iterdir() if p.name.endswith("-edits.json") and b"Eiffel" in p.read_bytes())
    cached.write_bytes(cached.read_bytes()[:-5])  # damaged on disk
    with pytest.raises(DataError, match=r"does not match its checksum .*; delete .* to download it again"):
        load_edits("counterfact", f"{base}/a/edits.json")


@pytest.mark.parametrize(
    "data,match",
    [
        ({"steps": {"magnitude": {"sparsity": 0.9}}}, r"steps: expected a list of steps"),
        ({"steps": 5}, r"steps: expected a list of steps.*got int 5"),
        ({"metrics": 5}, r"metrics: expected a list of metric names.*got int 5"),
        ({"metrics": ""}, r"metrics: empty"),
        ({"metric_options": "x"}, r"metric_options: expected a mapping"),
        ({"model": ["a", "b"]}, r"model: expected a model name.*got a list"),
        ({"out": {"a": 1}}, r"out: expected a name or path; got a mapping"),
        ({"edits": True}, r"edits: expected a whole number.*got the boolean true"),
        ({"skip_invalid": "maybe"}, r"skip_invalid: expected true or false; got the string 'maybe'"),
        ({"device": 0}, r"device: expected a device name"),
        ({"seed": 1.5}, r"seed: expected a whole number"),
    ],
)
def test_a_setting_of_the_wrong_shape_is_one_message(tmp_path, data, match):
    cfg = {"model": "smollm2-135m", "steps": ["magnitude:sparsity=0.5"], **data}
    with pytest.raises(ConfigError, match=match):
        RunSettings.from_mapping(cfg, where="c.yaml").validate()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for args in (["validate", path], ["run", "-c", path, "--out", tmp_path / "run"]):
        out = one_message(invoke(*args))
        assert "error:" in out
    assert not (tmp_path / "run").exists()


def test_a_record_field_of_the_wrong_shape_is_one_message(tmp_path):
    bad = {
        "case_id": "x",
        "subject": "Rome",
        "prompt": "Rome is in",
        "target_new": "Spain",
        "rephrases": "Rome lies in",
    }
    path = tmp_path / "edits.jsonl"
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"rephrases must be a list, got str"):
        load_edits("records", path)
    bad["rephrases"], bad["locality"] = [], [{"question": "q"}]
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match="locality items are"):
        load_edits("records", path)


# --------------------------------------------------------------------------------------
# beyond the model's positions
# --------------------------------------------------------------------------------------


def test_a_prompt_beyond_the_models_positions_is_refused_before_any_work(tmp_path):
    long = EditRecord("long", "Rome", "Rome " + "is a city that " * 200 + "lies in", "Spain")
    for arch in ("llama", "gpt2"):
        with pytest.raises(DataError, match=r"edit request 'long'.*tokens, beyond the model's 256 positions"):
            compose(tiny_model(arch), ["magnitude"], edits=[long], metrics=["edit"], out=tmp_path / arch)
        assert read_rows(tmp_path / arch / "results.jsonl") == []


def test_calibration_windows_longer_than_the_model_are_cut_with_a_note():
    from lmcompose.api import Context

    for arch in ("llama", "gpt2"):
        ctx = Context(calibration_samples=2, calibration_seqlen=1024)
        rows = compose(tiny_model(arch), ["wanda:sparsity=0.5"], metrics=["avg_bits"], ctx=ctx)
        assert rows[1]["step_details"]["calibration_seqlen"] == 256
        assert any("longer than the model's 256 positions: cut to 256" in n for n in ctx.notes)


# --------------------------------------------------------------------------------------
# non-finite values
# --------------------------------------------------------------------------------------


class Poison(Intervention):
    """Sets one weight to NaN (a step gone wrong)."""

    name = "poison"
    kind = "edit"

    def apply(self, lm, ctx):
        with torch.no_grad():
            lm.weight(lm.linear_layers()[0][0])[0, 0] = float("nan")
        return self.report(loss=float("nan"))


class Explode(Intervention):
    """A plugin step with a bug."""

    name = "explode"
    kind = "prune"

    def apply(self, lm, ctx):
        raise RuntimeError("index out of bounds in my kernel")


class _BuggyPlugin:
    @hookimpl
    def register_interventions(self, register):
        register(Explode, name="explode")


def test_non_finite_weights_and_metrics_are_flagged_and_never_averaged(tmp_path):
    edits = load_edits("records", limit=2)
    rows = compose(
        tiny_model("llama"),
        ["magnitude", Poison()],
        edits=edits,
        metrics=["perplexity", "edit"],
        out=tmp_path,
        metric_options={"perplexity": {"seqlen": 64, "max_tokens": 128}},
    )
    last = rows[-1]
    assert any("non-finite weights" in w for w in last["warnings"]) and any(
        "non-finite loss" in w for w in last["warnings"]
    )
    assert last["nonfinite"]["perplexity"] == "nan" and last["perplexity"] is None
    from lmcompose.composability import normalized_criterion

    assert normalized_criterion("perplexity", last, rows[0]) is None  # unknown, not "worst"


def test_the_report_notes_conflicting_duplicates_bad_lines_and_nan(tiny_folder, tmp_path):
    out = tmp_path / "run"
    assert (
        invoke(
            "sweep",
            tiny_folder,
            "magnitude",
            "rtn:group_size=32",
            "--vary",
            "rtn.bits=8,4",
            "--out",
            out,
            "--no-plots",
            *FAST,
        ).exit_code
        == 0
    )
    lines = (out / "results.jsonl").read_text().splitlines()
    dup = json.loads(lines[3])
    dup["perplexity"] = 1.0
    nan = json.loads(lines[5])
    nan["perplexity"], nan["nonfinite"] = None, {"perplexity": "nan"}
    lines[5] = json.dumps(nan)
    lines.insert(4, "[1, 2, 3]")
    lines.insert(2, '{"torn": ')
    lines.append(json.dumps(dup))
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    res = invoke("report", out, "--no-plots")
    text = one_message(res, 0) + (out / "report.md").read_text()
    assert "has two rows that disagree; the first is used" in text
    assert "line 3 is not valid JSON and was skipped" in text and "line 6 is not a JSON object" in text
    assert "perplexity NaN (flagged, not averaged in)" in text


# --------------------------------------------------------------------------------------
# tracebacks become one message
# --------------------------------------------------------------------------------------


def _corrupt(folder: str | Path, how: str) -> Path:
    target = Path(folder).parent / f"model-{how}"
    shutil.copytree(folder, target)
    weights = target / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if how == "truncated" else b"\x00garbage" * 100)
    return target


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_damaged_safetensors_file_is_one_message(tiny_folder, how):
    out = one_message(invoke("run", _corrupt(tiny_folder, how), "magnitude", *FAST))
    assert "could not load model" in out and "truncated or corrupt" in out


@pytest.mark.parametrize(
    "args,match",
    [
        (["rtn:bits=nan"], r"'nan' is not an integer"),
        (["rtn:bits=inf"], r"'inf' is not an integer"),
        (["magnitude:sparsity=nan"], r"sparsity"),
        (["magnitude", "--device", "tpu"], r"--device 'tpu' is not a device lmcompose can run on"),
        (["magnitude", "--device", "cuda:x"], r"is not a device lmcompose can run on"),
        (["magnitude", "--ppl-tokens", "0"], r"--ppl-tokens 0: give a positive number of tokens, or 'all'"),
        (["magnitude", "--metrics", ""], r"--metrics '' names no metric"),
    ],
)
def test_bad_flags_are_one_message(tiny_folder, tmp_path, args, match):
    out = one_message(invoke("run", tiny_folder, *args, "--out", tmp_path / "run"))
    import re

    assert re.search(match, out), out
    assert not (tmp_path / "run" / "results.jsonl").exists()


def test_a_cuda_device_on_a_cpu_build_is_one_message(tiny_folder, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    out = one_message(invoke("run", tiny_folder, "magnitude", "--device", "cuda:7", *FAST))
    assert "--device cuda:7: this torch" in out and "use --device cpu" in out


def test_a_binary_dataset_file_is_one_message(tiny_folder, tmp_path):
    blob = tmp_path / "edits.json"
    blob.write_bytes(bytes(range(256)) * 10)
    out = one_message(
        invoke("run", tiny_folder, "magnitude", "--dataset", "counterfact", "--dataset-source", blob, *FAST)
    )
    assert "is not text" in out


def test_a_read_only_out_folder_is_one_message(tiny_folder, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    out = one_message(invoke("run", tiny_folder, "magnitude", "--out", ro / "run", *FAST))
    assert "choose a writable --out" in out


def test_an_out_folder_that_cannot_be_created_is_one_message(tiny_folder, tmp_path):
    (tmp_path / "file").write_text("x")
    out = one_message(invoke("run", tiny_folder, "magnitude", "--out", tmp_path / "file" / "run", *FAST))
    assert "cannot create the run folder" in out


MEMIT = "memit:layers=0+1,context_templates=0,stats_samples=8,stats_seqlen=64,v_num_grad_steps=5"


def _tiny_study(folder: Path, model: Path, **over) -> Path:
    data = {
        "name": "tiny",
        "model": str(model),
        "datasets": [{"name": "counterfact", "source": "sample"}],
        "editors": [MEMIT],
        "compressors": [{"step": "magnitude", "vary": {"sparsity": [0.25, 0.5]}}],
        "edits": 2,
        "metrics": ["edit", "perplexity", "avg_bits"],
        "budgets": {"ppl_tokens": 128, "ppl_seqlen": 64, "ppl_corpus": "sample", "calibration_corpus": "sample"},
        **over,
    }
    path = folder / f"study-{len(list(folder.glob('study-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# (what is wrong, the command without --out, what the message says); {T}: a tiny model folder, {tmp}: a scratch folder
REFUSED_BEFORE_WRITING = [
    (
        "dataset source",
        ["run", "{T}", "magnitude", "--dataset", "counterfact", "--dataset-source", "{tmp}/no.json"],
        "no.json",
    ),
    ("too many edits", ["run", "{T}", "magnitude", "--dataset", "records", "--edits", "1000"], "needs 1000 records"),
    ("revision", ["run", "{T}", "magnitude", "--revision", "main"], "is a local model, not a hub id"),
    ("model", ["run", "{tmp}/no-model", "magnitude"], "does not exist"),
    ("model folder", ["run", "{tmp}", "magnitude"], "no config.json"),
    (
        "sweep source",
        [
            "sweep",
            "{T}",
            "magnitude",
            "--vary",
            "magnitude.sparsity=0.25,0.5",
            "--dataset",
            "counterfact",
            "--dataset-source",
            "{tmp}/no.json",
        ],
        "no.json",
    ),
    ("study source", ["study", "{study:source}"], "no.json"),
    ("study edits", ["study", "{study:edits}"], "needs 1000 records"),
    ("study model", ["study", "{study:model}"], "does not exist"),
    ("ray cpus", ["study", "{study}", "--executor", "ray", "--cpus-per-task", "0"], "give a number of CPUs above 0"),
    (
        "ray cpus nan",
        ["study", "{study}", "--executor", "ray", "--cpus-per-task", "nan"],
        "give a number of CPUs above 0",
    ),
    ("ray gpus", ["study", "{study}", "--executor", "ray", "--gpus-per-task", "-0.5"], "give a number of GPUs from 0"),
]


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
@pytest.mark.parametrize("why,args,match", REFUSED_BEFORE_WRITING, ids=[r[0] for r in REFUSED_BEFORE_WRITING])
def test_a_refusal_writes_nothing(tiny_folder, tmp_path, why, args, match, existing):
    """docs/cli.md: a mistake in what was asked is exit 2, checked before anything is written:
    --out is not created (no .lock), and an existing one is left as it was."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    studies = {
        "{study}": _tiny_study(scratch, tiny_folder),
        "{study:source}": _tiny_study(
            scratch, tiny_folder, datasets=[{"name": "counterfact", "source": str(scratch / "no.json")}]
        ),
        "{study:edits}": _tiny_study(scratch, tiny_folder, edits=1000),
        "{study:model}": _tiny_study(scratch, scratch / "no-model"),
    }

    def fill(arg: str) -> str:
        return str(studies.get(arg, arg)).replace("{T}", str(tiny_folder)).replace("{tmp}", str(scratch))

    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    text = one_message(invoke(*[fill(a) for a in args], "--out", out, *(FAST if args[0] != "study" else [])))
    assert match in text, text
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    else:
        assert not out.exists()


@pytest.fixture(scope="module")
def tiny_lm():
    return tiny_model("llama")


# (the call, what the message says); each is given a tiny model, an out folder it must not create and a study
API_MISUSE = [
    (lambda lm, out, study: compose(None, ["magnitude"], out=out), "compose(): lm: expected a loaded model"),
    (lambda lm, out, study: compose(str(out), ["magnitude"], out=out), "lmcompose.load_model("),
    (lambda lm, out, study: compose(lm, None, out=out), "compose(): steps: expected a list of steps"),
    (lambda lm, out, study: compose(lm, {"magnitude": {}}, out=out), "compose(): steps: expected a list of steps"),
    (
        lambda lm, out, study: compose(lm, ["magnitude"], edits="counterfact", out=out),
        "compose(): edits: expected a list",
    ),
    (lambda lm, out, study: compose(lm, ["magnitude"], out=out, seed="1"), "compose(): seed: expected a whole number"),
    (lambda lm, out, study: compose(lm, ["magnitude"], out=5), "compose(): out: expected a name or path; got int 5"),
    (
        lambda lm, out, study: sweep(lm, ["magnitude", "rtn"], vary={"rtn.bits": [8, 4]}, out=out),
        "sweep(): vary: expected",
    ),
    (lambda lm, out, study: sweep(lm, ["magnitude", "rtn"], vary=["rtn.bits=8,4"], out=out), "sweep(): vary: expected"),
    (
        lambda lm, out, study: sweep(lm, ["magnitude"], vary="magnitude.sparsity=0.5", out=out, replicates="2"),
        "replicates:",
    ),
    (
        lambda lm, out, study: sweep(None, ["magnitude"], vary="magnitude.sparsity=0.5", out=out),
        "sweep(): lm: expected",
    ),
    (lambda lm, out, study: load_edits("records", limit="2"), "load_edits(): limit"),
    (lambda lm, out, study: load_edits("records", limit=2.5), "load_edits(): limit"),
    (lambda lm, out, study: load_edits(None), "load_edits(): dataset: expected"),
    (lambda lm, out, study: _load_model(None), "model: expected a model name"),
    (lambda lm, out, study: _load_model(42), "model: expected a model name"),
    (lambda lm, out, study: _run_study(study, out, shard=(3, 2)), "I must be between 1 and N (got 3 of 2)"),
    (lambda lm, out, study: _run_study(study, out, shard=(0, 0)), "N must be from 1 to 100,000"),
    (lambda lm, out, study: _run_study(study, out, shard=("1", "2")), "give I/N"),
    (lambda lm, out, study: _run_study(study, out, executor="ray", cpus_per_task="2"), "--cpus-per-task '2'"),
    (lambda lm, out, study: _merge(str(out)), "merge_studies(): sources: expected a list of shard folders"),
]


def _load_model(spec):
    from lmcompose.models.loading import load_model

    return load_model(spec)


def _run_study(study, out, **kwargs):
    from lmcompose.studies.runner import run_study

    return run_study(study, out=out, **kwargs)


def _merge(source):
    from lmcompose.studies.runner import merge_studies

    return merge_studies(source, source)


@pytest.mark.parametrize("call,match", API_MISUSE, ids=[m[1][:40] for m in API_MISUSE])
def test_the_python_api_refuses_a_wrong_type_with_one_message_and_writes_nothing(
    tiny_folder, tiny_lm, tmp_path, call, match
):
    with pytest.raises(UsageError, match=re.escape(match)):
        call(tiny_lm, tmp_path / "out", _tiny_study(tmp_path, tiny_folder))
    assert not (tmp_path / "out").exists()


def test_the_python_api_reads_strings_as_a_config_file_does(tiny_lm, tmp_path):
    rows = compose(tiny_lm, "magnitude:sparsity=0.5", metrics="avg_bits,flops")  # one step, two metrics
    assert [r["position"] for r in rows] == [0, 1] and rows[1]["step"]["config"]["sparsity"] == 0.5
    assert {"avg_bits", "flops"} <= set(rows[0])
    rows = sweep(tiny_lm, "magnitude rtn", vary="rtn.bits=8,4", metrics=["avg_bits"], topk=0)
    assert len({r["cell"] for r in rows}) == 2 * 2
    # the messages are the CLI's: a config file's `vary: {rtn.bits: [8, 4]}` says the same
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"model": "m", "steps": ["magnitude", "rtn"], "vary": {"rtn.bits": [8, 4]}}))
    cli = one_message(invoke("validate", config))
    with pytest.raises(ConfigError) as api:
        sweep(tiny_lm, ["magnitude", "rtn"], vary={"rtn.bits": [8, 4]})
    assert str(api.value).removeprefix("sweep(): ") in cli


def test_a_failing_plugin_step_names_the_plugin_and_debug_shows_the_traceback(register, tiny_folder, tmp_path):
    register(_BuggyPlugin(), "buggy", "lmcompose-buggy")
    out = one_message(invoke("run", tiny_folder, "explode", *FAST), code=1)
    assert "step 'explode' (from lmcompose-buggy) failed" in out and "index out of bounds in my kernel" in out
    res = invoke("--debug", "run", tiny_folder, "explode", *FAST)
    assert res.exit_code == 1 and "Traceback" in res.output and "RuntimeError" in res.output


def test_a_full_disk_while_writing_snapshots_is_one_message_and_leaves_nothing(tiny_folder, tmp_path, monkeypatch):
    import safetensors.torch

    real = safetensors.torch.save_model
    calls = {"n": 0}

    def full(model, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(model, path, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_model", full)
    args = [
        "sweep",
        tiny_folder,
        "magnitude",
        "rtn:group_size=32",
        "--vary",
        "rtn.bits=8,4,3",
        "--snapshots",
        "disk",
        "--out",
        tmp_path / "run",
        "--no-plots",
        *FAST,
    ]
    out = one_message(invoke(*args), code=1)
    assert "cannot write a model snapshot" in out and "No space left on device" in out
    assert not (tmp_path / "run" / ".snapshots").exists()
    monkeypatch.setattr(safetensors.torch, "save_model", real)
    assert invoke(*args).exit_code == 0  # a later resume finishes, and cleans up after itself
    assert not (tmp_path / "run" / ".snapshots").exists()
    assert len(read_rows(tmp_path / "run" / "results.jsonl")) == 2 * 3 * 3


def test_stale_snapshots_of_a_killed_process_are_removed(tiny_folder, tmp_path):
    stale = tmp_path / "run" / ".snapshots" / "snapshot-7"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"x" * 100)
    assert (
        invoke(
            "sweep",
            tiny_folder,
            "magnitude",
            "rtn:group_size=32",
            "--vary",
            "rtn.bits=8,4",
            "--snapshots",
            "disk",
            "--out",
            tmp_path / "run",
            "--no-plots",
            *FAST,
        ).exit_code
        == 0
    )
    assert not (tmp_path / "run" / ".snapshots").exists()


# --------------------------------------------------------------------------------------
# security
# --------------------------------------------------------------------------------------


def test_a_model_folder_with_custom_code_is_refused(tiny_folder, tmp_path):
    folder = tmp_path / "remote"
    shutil.copytree(tiny_folder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "modeling_evil.py").write_text("raise SystemExit('the folder code ran')\n")
    out = one_message(invoke("run", folder, "magnitude", *FAST), code=2)
    assert "never runs code from a model folder" in out and "the folder code ran" not in out
    with pytest.raises(ModelLoadError, match="auto_map"):
        from lmcompose.models.loading import load_model

        load_model(str(folder))


def _study_file(folder: Path, tiny: Path, **over) -> Path:
    """A one-cell study without editors (a magnitude pruning of the tiny model)."""
    data = {
        "model": str(tiny),
        "datasets": ["counterfact"],
        "compressors": [{"steps": ["magnitude"], "vary": {"magnitude.sparsity": [0.5]}}],
        "metrics": ["avg_bits"],
        **over,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", ["../../../../escape", "a/b", "/abs", "a\x00b", "a\nb", ".hidden", "x" * 101])
def test_a_study_name_that_is_not_one_folder_name_is_refused(tiny_folder, tmp_path, monkeypatch, name):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    study_file = _study_file(tmp_path, tiny_folder, name=name)
    for command in ("validate", "study"):
        out = one_message(invoke(command, study_file))
        assert "name: " in out and "cannot name the study's folder" in out
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "s.yaml"]  # nothing written anywhere


def test_the_default_study_folder_is_one_folder_inside_runs_whatever_the_name(tiny_folder, tmp_path):
    from lmcompose.studies import Study, load_study
    from lmcompose.studies.runner import default_out

    data = yaml.safe_load(_study_file(tmp_path, tiny_folder).read_text())
    for name in ("../../escape", "a/b\\c", "x\ty", "my study"):  # from the API or a file's stem
        out = default_out(Study.from_mapping(data, name=name))
        assert out.parent == Path("runs") and len(out.parts) == 2, out
    spaced = tmp_path / "my study.yaml"  # a stem that is no NAME_PATTERN name keeps its folder
    spaced.write_text(yaml.safe_dump(data))
    assert default_out(load_study(spaced)).name.startswith("study-my study-")


def _victims(tmp_path: Path) -> tuple[Path, Path]:
    """A file and a folder a link in a run folder could point at (someone else's data)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    folder = tmp_path / "victim-folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious\n")
    return victim, folder


def _untouched(victim: Path, folder: Path) -> None:
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("entry", WRITTEN_ENTRIES)
def test_a_link_where_the_run_folder_writes_is_refused_naming_it(tiny_folder, tmp_path, entry):
    victim, folder = _victims(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / entry).symlink_to(folder if entry in {"plots", "models", ".snapshots"} else victim)
    res = invoke("sweep", tiny_folder, "magnitude", "--vary", "magnitude.sparsity=0.25,0.5", "--out", out, *FAST)
    assert f"{out / entry} is a symbolic link" in one_message(res)
    _untouched(victim, folder)


def test_the_rows_and_the_lock_are_opened_without_following_a_link(tmp_path):
    from lmcompose.results import append_row

    victim, folder = _victims(tmp_path)
    (tmp_path / "results.jsonl").symlink_to(victim)
    with pytest.raises(UsageError, match=r"results.jsonl is a symbolic link .*victim.txt"):
        append_row(tmp_path / "results.jsonl", {"run_id": "x"})  # the open itself refuses (O_NOFOLLOW)
    run = RunFolder(tmp_path / "run", "x", "run")
    run.path.mkdir()
    (run.path / ".lock").symlink_to(victim)
    with pytest.raises(UsageError, match=r"\.lock is a symbolic link"):
        run._lock()  # a link placed after open()'s check
    _untouched(victim, folder)


def test_report_and_save_targets_refuse_links_and_temporary_names_are_not_guessable(tiny_folder, tmp_path):
    victim, folder = _victims(tmp_path)
    out = tmp_path / "run"
    args = ["sweep", tiny_folder, "magnitude", "--vary", "magnitude.sparsity=0.25,0.5", "--out", out, *FAST]
    assert invoke(*args, "--no-plots").exit_code == 0
    (out / "report.md").unlink()
    (out / "report.md").symlink_to(victim)
    assert "report.md is a symbolic link" in one_message(invoke("report", out, "--no-plots"))
    (out / "report.md").unlink()
    (out / "plots").symlink_to(folder)
    assert "plots is a symbolic link" in one_message(invoke("report", out))
    (tmp_path / "saved").symlink_to(folder)
    res = invoke("run", tiny_folder, "magnitude", "--out", tmp_path / "r2", "--save-model", tmp_path / "saved", *FAST)
    assert "saved is a symbolic link" in one_message(res)
    _untouched(victim, folder)
    # a writer's temporary file is created with O_EXCL under a random name: a link planted at
    # the name a pid would give is never written through
    from lmcompose.results import write_text_atomic

    (tmp_path / f".note.md.tmp-{os.getpid()}").symlink_to(victim)
    write_text_atomic(tmp_path / "note.md", "new\n")
    assert (tmp_path / "note.md").read_text() == "new\n"
    _untouched(victim, folder)


def test_every_entry_a_sweep_writes_is_checked_for_links(tiny_folder, tmp_path):
    from lmcompose.report import PLOTS_DIR
    from lmcompose.report import REPORT_FILE as SWEEP_REPORT
    from lmcompose.studies.report import REPORT_FILE, TABLE_FILE

    out = tmp_path / "run"
    args = ["sweep", tiny_folder, "magnitude", "--vary", "magnitude.sparsity=0.25,0.5", "--out", out, *FAST]
    assert invoke(*args, "--snapshots", "disk", "--save-cells", "all").exit_code == 0
    written = {p.name for p in out.iterdir()}
    assert written <= set(WRITTEN_ENTRIES), written
    assert {SWEEP_REPORT, REPORT_FILE, TABLE_FILE, PLOTS_DIR} <= set(WRITTEN_ENTRIES)


def test_saved_models_and_run_files_follow_the_umask(tiny_folder, tmp_path):
    old = os.umask(0o027)
    try:
        out, saved = tmp_path / "run", tmp_path / "saved"
        res = invoke("run", tiny_folder, "magnitude", "--out", out, "--save-model", saved, *FAST)
        assert res.exit_code == 0, res.output
        sweep_out = tmp_path / "sweep"
        args = ["sweep", tiny_folder, "magnitude", "--vary", "magnitude.sparsity=0.25,0.5", "--out", sweep_out]
        assert invoke(*args, "--save-cells", "all", *FAST).exit_code == 0
        tiny_model("llama").save(tmp_path / "api")
        exported = tmp_path / "exported"
        assert invoke("export", out, "--out", exported).exit_code == 0
    finally:
        os.umask(old)
    paths = [
        *saved.rglob("*"),
        *exported.rglob("*"),
        *(tmp_path / "api").rglob("*"),
        *sweep_out.rglob("*"),
        *(p for p in out.iterdir()),
        saved,
        exported,
        sweep_out / "models",
    ]
    modes = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths}
    want = {str(p): oct(0o750 if p.is_dir() else 0o640) for p in paths}
    assert modes == want
    assert any(p.name == "model.safetensors" for p in saved.iterdir())


def test_rows_csv_cells_that_start_like_a_formula_are_written_as_text(tiny_folder, tmp_path):
    import csv

    from lmcompose.studies.report import write_flat_table

    texts = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "plain", "a=b"]
    numbers = ["-0.5", "+1e-3", "-7", ".5"]
    write_flat_table([{"name": t} for t in texts + numbers] + [{"=key": -0.5, "x": -2}], tmp_path / "rows.csv")
    with open(tmp_path / "rows.csv", newline="", encoding="utf-8") as f:
        header, *cells = list(csv.reader(f))
    assert header == ["name", "'=key", "x"]
    assert [c[0] for c in cells[:-1]] == ["'" + t for t in texts[:6]] + texts[6:] + numbers
    assert cells[-1] == ["", "-0.5", "-2"]  # numbers stay numbers
    # through a study: an entry named like a formula
    entries = [{"steps": ["magnitude"], "vary": {"magnitude.sparsity": [0.5]}, "name": "=1+1"}]
    study_file = _study_file(tmp_path / "s", tiny_folder, name="csv", compressors=entries)
    res = invoke("study", study_file, "--out", tmp_path / "run", "--no-plots")
    assert res.exit_code == 0, res.output
    with open(tmp_path / "run" / "rows.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["entry"] for r in rows} == {"'=1+1"} and all(not r["cell"].startswith("=") for r in rows)


# --------------------------------------------------------------------------------------
# values beyond their range: refused where they are read, the range in the message
# --------------------------------------------------------------------------------------

NINE_STEPS = [
    "magnitude",
    "rtn",
    "wanda",
    "sparsegpt",
    "gptq",
    "awq",
    "magnitude:sparsity=0.2",
    "rtn:bits=8",
    "wanda:n_samples=4",
]
BOUNDS = [
    # (command line; {study} is a one-cell study file with these keys, {model} the tiny model; the message)
    (
        ["run", "{model}", "magnitude", "--threads", "100000"],
        {},
        r"threads: 100000 is above 1024; give a whole number of threads from 1 to 1024",
    ),
    (
        ["sweep", "{model}", "magnitude", "--vary", "magnitude.sparsity=0.5", "--threads", "100000"],
        {},
        r"threads: 100000 is above 1024",
    ),
    (
        ["study", "{study}", "--threads", "100000"],
        {},
        r"--threads 100000: give a whole number of threads from 1 to 1024",
    ),
    (
        ["study", "{study}", "--executor", "ray", "--threads", "0"],
        {},
        r"--threads 0: give a whole number of threads from 1 to 1024",
    ),
    (
        ["study", "{study}"],
        {"noise_floor": {"cells": ["magnitude"], "threads": 5000}},
        r"noise_floor\.threads: 5000 is above 1024",
    ),
    (["run", "{model}", "magnitude", "--seed", str(10**20)], {}, r"seed: 100000000000000000000 is above 4294967295"),
    (["study", "{study}"], {"seed": 2**70}, r"seed: 1180591620717411303424 is above 4294967295"),
    (
        ["study", "{study}"],
        {"noise_floor": {"cells": ["magnitude"], "seeds": [2**64]}},
        r"noise_floor\.seeds\[0\]: \d+ is above 4294967295",
    ),
    (["study", "{study}"], {"topk": 10**9}, r"topk: 1000000000 is above 1000; give a whole number from 0 to 1000"),
    (
        ["sweep", "{model}", "magnitude", "--vary", "magnitude.sparsity=0.5", "--topk", "100000"],
        {},
        r"topk: 100000 is above 1000",
    ),
    (["study", "{study}", "--shard", "99999999999999999999/99999999999999999999"], {}, r"N must be from 1 to 100,000"),
    (
        ["study", "{study}", "--executor", "ray", "--cpus-per-task", "nan"],
        {},
        r"--cpus-per-task nan: give a number of CPUs above 0 to 1024",
    ),
    (
        ["study", "{study}", "--executor", "ray", "--gpus-per-task", "inf"],
        {},
        r"--gpus-per-task inf: give a number of GPUs from 0",
    ),
    (
        ["study", "{study}"],
        {"resources": {"cpus_per_task": float("inf")}},
        r"resources\.cpus_per_task: inf is out of range; use a value in \(0, 1024\]",
    ),
    (
        ["study", "{study}"],
        {"compressors": [{"steps": ["magnitude", "rtn"], "vary": {"rtn.bits": [4]}, "orders": 5}]},
        r"compressors\[0\]\.orders: --orders int 5: give 'all'",
    ),
    (
        ["study", "{study}"],
        {"compressors": [{"steps": ["magnitude", "rtn"], "vary": {"rtn.bits": [4]}, "orders": [["magnitude", 5]]}]},
        r"int 5 is not a step name",
    ),
    (
        ["study", "{study}"],
        # orders of repeated names count once each: 10! / 2^4 = 226,800 distinct orders
        {"compressors": [{"steps": [*NINE_STEPS, "gptq:bits=8"], "vary": {"awq.bits": [4]}}]},
        r"compressors\[0\]\.orders: this asks for 226,800 cells, more than the 100,000",
    ),
    (["study", "{study}"], {"model": "t\x00l"}, r"model: 't\\x00l' holds a NUL character"),
    (["study", "{study}"], {"budgets": {"ppl_corpus": "a\x00b"}}, r"budgets\.ppl_corpus: expected wikitext2"),
    (["run", "-c", "{config}"], {"out": "a\x00b"}, r"out: 'a\\x00b' holds a NUL character"),
]


@pytest.mark.parametrize("args,keys,match", BOUNDS, ids=[f"{b[0][0]}-{i}" for i, b in enumerate(BOUNDS)])
def test_a_value_beyond_its_range_is_one_message_naming_the_range(
    tiny_folder, tmp_path, monkeypatch, args, keys, match
):
    import re

    monkeypatch.chdir(tmp_path)
    study_file = _study_file(tmp_path / "study", tiny_folder, **(keys if "{study}" in args else {}))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_folder), "steps": ["magnitude"], **keys}))
    filled = [str(a).format(model=tiny_folder, study=study_file, config=config) for a in args]
    out = one_message(invoke(*filled, *(FAST if args[0] in {"run", "sweep"} else [])))
    assert re.search(match, out), out
    assert not (tmp_path / "runs").exists() and "internal error" not in out


def test_files_nested_thousands_deep_are_one_message(tiny_folder, tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("model: x\nsteps: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nests lists or mappings more than 100 levels deep" in one_message(invoke("validate", deep))
    records = tmp_path / "deep.json"
    records.write_text("[" * 100_000 + "]" * 100_000)
    res = invoke("run", tiny_folder, "magnitude", "--dataset", "counterfact", "--dataset-source", records, *FAST)
    assert "nests lists or mappings more than 100 levels deep" in one_message(res)
    # a results row nested that deep is skipped with a note, like a line that is not JSON
    from lmcompose.results import read_rows_checked

    rows = tmp_path / "results.jsonl"
    rows.write_text(
        '{"position": 0}\n' + "[" * 100_000 + "]" * 100_000 + '\n{"x": ' + "[" * 200 + "]" * 200 + "}\n{}\n"
    )
    kept, problems = read_rows_checked(rows)
    assert len(kept) == 2 and [p.split(" nests")[0] for p in problems] == [
        "results.jsonl line 2",
        "results.jsonl line 3",
    ]


def test_a_merge_of_a_row_with_a_bad_position_merges_nothing(tiny_folder, tmp_path):
    shard = tmp_path / "shard"
    assert invoke("study", _study_file(tmp_path, tiny_folder, name="m"), "--out", shard, "--no-plots").exit_code == 0
    lines = (shard / "results.jsonl").read_text().splitlines()
    bad = json.loads(lines[-1])
    bad["position"] = "zero"
    (shard / "results.jsonl").write_text("\n".join([*lines[:-1], json.dumps(bad), lines[-1]]) + "\n")
    out = one_message(invoke("merge", shard, "--out", tmp_path / "merged"))
    assert f"line {len(lines)} has position 'zero', not a whole number >= 0" in out and "nothing was merged" in out
    assert not (tmp_path / "merged").exists()
    assert invoke("report", shard, "--no-plots").exit_code == 0  # a report skips the line with a note


def test_a_calibration_text_too_short_for_a_window_is_one_message(tiny_folder, tmp_path):
    short = tmp_path / "two.txt"
    short.write_text("hi there\n")
    step = "wanda:sparsity=0.5,n_samples=4,seqlen=32"
    res = invoke(
        "run", tiny_folder, step, "--out", tmp_path / "r", "--metrics", "avg_bits", "--calibration-corpus", short
    )
    out = one_message(res)
    assert "calibration text" in out and f"{short} is too short (5 tokens" in out and "at least 9 are needed" in out


def test_topk_beyond_the_vocabulary_records_every_token(tiny_folder, tmp_path):
    args = ["sweep", tiny_folder, "magnitude", "--vary", "magnitude.sparsity=0.5", "--topk", "1000", "--no-plots"]
    assert invoke(*args, "--out", tmp_path / "s", *FAST).exit_code == 0
    tops = [r["topk"] for r in read_rows(tmp_path / "s" / "results.jsonl") if r.get("topk")]
    assert tops and {len(t["token_ids"]) for t in tops} == {tiny_model("llama").model.config.vocab_size}


# --------------------------------------------------------------------------------------
# messages that blame what is wrong
# --------------------------------------------------------------------------------------


def _model_copy(tiny_folder: Path, folder: Path, model_type: str | None = None) -> Path:
    shutil.copytree(tiny_folder, folder)
    if model_type is not None:
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "model_type": model_type}))
    return folder


def test_a_model_folder_is_refused_for_what_is_wrong_with_it_not_as_corrupt_weights(tiny_folder, tmp_path):
    no_tokenizer = _model_copy(tiny_folder, tmp_path / "no-tokenizer")
    for f in no_tokenizer.glob("tokenizer*"):
        f.unlink()
    broken_tokenizer = _model_copy(tiny_folder, tmp_path / "broken-tokenizer")
    (broken_tokenizer / "tokenizer.json").write_text("{")
    cases = [
        (no_tokenizer, "has weights but no tokenizer"),
        (broken_tokenizer, "could not load the tokenizer of"),
        (_model_copy(tiny_folder, tmp_path / "unknown", "zorblax"), "model_type 'zorblax', which transformers"),
        (_model_copy(tiny_folder, tmp_path / "t5", "t5"), "model type 't5' is not a causal"),
    ]
    for folder, match in cases:
        out = one_message(invoke("run", folder, "magnitude", "--out", tmp_path / "out", *FAST))
        assert match in out and "corrupt" not in out, out
        assert not (tmp_path / "out").exists()
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": str(no_tokenizer), "steps": ["magnitude"]}))
    assert "has weights but no tokenizer" in one_message(invoke("validate", config))


def test_sources_are_read_where_they_are_and_named_for_what_they_are(tiny_folder, tmp_path):
    from importlib import resources

    from lmcompose.corpora import check_corpus_files, parse_corpus

    real = tmp_path / "edits.json"
    real.write_text(resources.files("lmcompose_counterfact").joinpath("sample", "counterfact_sample.json").read_text())
    assert load_edits("counterfact", f"file://{real}", limit=2) == load_edits("counterfact", str(real), limit=2)
    assert load_edits("counterfact", f"file://localhost{real}", limit=2) == load_edits(
        "counterfact", str(real), limit=2
    )
    for source, match in [
        (str(tmp_path), "is a folder, not a file"),
        (f"file://{tmp_path}", "is a folder, not a file"),
        ("/dev/null", "is not a regular file"),
        (f"file://data{real}", "names a host ('data')"),
        (str(tmp_path / "missing.json"), "missing.json does not exist"),
    ]:
        with pytest.raises(DataError, match=re.escape(match)):
            load_edits("counterfact", source, limit=2)
    text = tmp_path / "own.txt"
    text.write_text("some text")
    assert parse_corpus(f"file://{text}").name == str(text)
    with pytest.raises(ConfigError, match="not downloaded"):
        parse_corpus("https://example.org/corpus.txt", "ppl_corpus")
    for corpus, match in [
        (str(tmp_path), "is a folder, not a file"),
        (f"hub:{tmp_path / 'nothing'}", "folder " + str(tmp_path / "nothing") + " does not exist"),
        (f"hub:{text}", "is a file, and hub: reads a dataset id or a folder"),
        ("hub:../no/such/folder", "does not exist"),
    ]:
        with pytest.raises(DataError, match=re.escape(match)):
            check_corpus_files(corpus, None)
    out = one_message(invoke("validate", _tiny_study(tmp_path, tiny_folder, budgets={"ppl_corpus": f"hub:{text}"})))
    assert "is a file, and hub:" in out and "offline" not in out


def test_what_changed_shows_where_a_long_setting_differs_and_nothing_that_did_not(tiny_folder, tmp_path):
    from lmcompose.engine.run_folder import describe_changes
    from lmcompose.studies import load_study

    grid = [round(0.01 * i, 2) for i in range(1, 40)]
    old = {"compressors": [{"name": "magnitude", "vary": "magnitude.sparsity=" + ",".join(map(str, grid))}]}
    new = {"compressors": [{"name": "magnitude", "vary": "magnitude.sparsity=" + ",".join(map(str, grid[:-1]))}]}
    (line,) = describe_changes(old, new)
    was, now = line.removeprefix("compressors[0].vary: ").split(" → ")
    assert was != now and "0.39" in was and "0.39" not in now, line
    (line,) = describe_changes({"steps": ["x" * 50] * 3}, {"steps": ["x" * 50] * 4})
    was, now = line.removeprefix("steps: ").split(" → ")
    assert was != now, line
    # a study folder refused for another grid names the grid, and no `kind` it did not change
    first = _tiny_study(tmp_path, tiny_folder)
    data = yaml.safe_load(first.read_text())
    vary = data["compressors"][0]["vary"]
    vary[next(iter(vary))] = [0.25, 0.75]
    second = tmp_path / "second" / first.name  # the same name (a study is named after its file)
    second.parent.mkdir()
    second.write_text(yaml.safe_dump(data))
    study = load_study(first)
    with RunFolder(tmp_path / "run", study.id, "study", {**study.resolved(), "study": study.data}) as folder:
        folder.write_config(inputs={"model_fingerprint": "f"})
    out = one_message(invoke("study", second, "--out", tmp_path / "run"))
    assert 'what changed: compressors[0].vary: "magnitude.sparsity=0.25,0.5" → "magnitude.sparsity=0.25,0.75".' in out
    assert "kind" not in out


def test_too_little_data_names_the_dataset_and_the_fix_that_fits(tiny_folder, tmp_path):
    out = one_message(
        invoke(
            "run",
            tiny_folder,
            "magnitude",
            "--dataset",
            "counterfact",
            "--dataset-source",
            "sample",
            "--edits",
            "1000",
            *FAST,
        )
    )
    assert "counterfact (" in out and "needs 1000 records" in out
    own = tmp_path / "own.txt"
    own.write_text("a few words")
    out = one_message(
        invoke("run", tiny_folder, "magnitude", "--ppl-corpus", own, "--metrics", "perplexity", "--ppl-seqlen", "64")
    )
    assert "too short" in out and "give a longer text file" in out and "wikitext" not in out


# --------------------------------------------------------------------------------------
# small surprises, each rejected
# --------------------------------------------------------------------------------------


def test_small_surprises_are_rejected(tiny_folder, tmp_path):
    sweep_args = ["sweep", tiny_folder, "magnitude", "rtn:group_size=32"]
    out = one_message(invoke(*sweep_args[:3], "rtn:bits=4,group_size=32", "--vary", "rtn.bits=8,3", *FAST))
    assert "which the step also sets" in out
    out = one_message(invoke(*sweep_args, "--vary", "rtn.bits=8,4", "--orders", "magnitude,rtn;", *FAST))
    assert "an order is empty" in out
    out = one_message(invoke(*sweep_args, "--vary", "rtn.bits=8,4", "--replicates", "2", *FAST))
    assert "needs --edits N" in out and "same cells" in out
    with pytest.raises(UsageError, match="every replicate would be the same cells"):
        sweep(tiny_model("llama"), ["magnitude", "rtn"], vary="rtn.bits=8,4", replicates=2, metrics=["avg_bits"])
    # a typo'd replicate count is refused before the cells are enumerated (it once filled the memory)
    out = one_message(
        invoke(
            *sweep_args,
            "--vary",
            "rtn.bits=8,4",
            "--replicates",
            "1000000000000",
            "--dataset",
            "records",
            "--edits",
            "2",
            *FAST,
        )
    )
    assert "cells, more than the 100,000 one plan holds" in out


def test_config_yaml_is_as_readable_as_the_other_files(tmp_path):
    compose(tiny_model("llama"), ["magnitude"], metrics=["avg_bits"], out=tmp_path)
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir() if p.name in {"config.yaml", "results.jsonl"}
    }
    assert modes["config.yaml"] == modes["results.jsonl"], modes


# --------------------------------------------------------------------------------------
# the soak: 20 random kills, each followed by a resume, give the uninterrupted result
# --------------------------------------------------------------------------------------


def _keyed(path: Path) -> dict:
    skip = {"timestamp", "elapsed_s", "eval_s", "notes", "shared_by_cells"}
    return {(r["cell"], r["position"]): {k: v for k, v in r.items() if k not in skip} for r in read_rows(path)}


def test_twenty_random_kills_each_resumed_give_the_uninterrupted_rows_and_report(tiny_folder, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "lmcompose_cli.main",
        "sweep",
        str(tiny_folder),
        "magnitude",
        "rtn:group_size=32",
        "--vary",
        "rtn.bits=8,4,3",
        "--dataset",
        "records",
        "--edits",
        "2",
        "--ppl-tokens",
        "128",
        "--ppl-seqlen",
        "64",
        "--metrics",
        "perplexity,avg_bits,edit",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    ref = subprocess.run([*cmd, "--out", str(tmp_path / "ref")], env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    full = time.perf_counter() - start
    rng = random.Random(20261201)
    out = tmp_path / "soak"
    for _ in range(20):
        proc = subprocess.Popen(
            [*cmd, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.5, full))  # anywhere: loading, a step, a row's write, the report, a plot
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run([*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _keyed(out / "results.jsonl") == _keyed(tmp_path / "ref" / "results.jsonl")
    rows = read_rows(out / "results.jsonl")
    assert len({(r["cell"], r["position"]) for r in rows}) == len(rows) == 2 * 3 * 3
    assert (out / "report.md").read_text() == (tmp_path / "ref" / "report.md").read_text()
    assert {p.name for p in (out / "plots").iterdir()} == {p.name for p in (tmp_path / "ref" / "plots").iterdir()}
    assert not list(out.glob(".*.tmp-*")) and not list((out / "plots").glob(".*.tmp-*"))


# --------------------------------------------------------------------------------------
# fuzz: the step grammar and config files never end in a traceback
# --------------------------------------------------------------------------------------

PIECES = [
    "magnitude",
    "rtn",
    "wanda",
    "memit",
    "sparsegpt",
    "gptq",
    "awq",
    "bits",
    "sparsity",
    "structure",
    "group_size",
    "2:4",
    "4:8",
    "nan",
    "inf",
    "-1",
    "0",
    "1e9",
    "0.5",
    "true",
    "none",
    "=",
    ":",
    ",",
    "+",
    " ",
    "",
    "é",
    "\x00",
    "targets",
    "layers",
    "a.b",
    "{}",
    "[",
    "]",
    "'",
    '"',
    "\\",
    "magnitude:",
    "rtn:bits=",
    ":::",
    "===",
    ",,",
]


def _random_step(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 7)))


def _random_value(rng: random.Random, depth: int = 0):
    kinds = (
        ["str", "int", "float", "bool", "none", "list", "dict"]
        if depth < 3
        else ["str", "int", "float", "bool", "none"]
    )
    kind = rng.choice(kinds)
    if kind == "str":
        return _random_step(rng)
    if kind == "int":
        return rng.choice([0, 1, -1, 2, 4, 7, 10**12])
    if kind == "float":
        return rng.choice([0.5, float("nan"), float("inf"), -0.0, 1e-12, 3.7])
    if kind == "bool":
        return rng.choice([True, False])
    if kind == "none":
        return None
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {
        rng.choice(["sparsity", "bits", "name", "step", "vary", "x", _random_step(rng)]): _random_value(rng, depth + 1)
        for _ in range(rng.randint(0, 3))
    }


def test_fuzz_the_step_grammar():
    from lmcompose.steps import build_intervention, parse_step

    rng = random.Random(1)
    deadline = time.perf_counter() + 15
    for _ in range(3000):
        text = _random_step(rng)
        try:
            build_intervention(parse_step(text))
        except LMComposeError:
            pass
        if time.perf_counter() > deadline:
            break


RUN_KEYS = [
    "model",
    "steps",
    "out",
    "dataset",
    "dataset_source",
    "edits",
    "skip_invalid",
    "seed",
    "policy",
    "metrics",
    "metric_options",
    "device",
    "dtype",
    "vary",
    "orders",
    "replicates",
    "snapshots",
    "topk",
    "calibration_samples",
    "protocol",
]
STUDY_KEYS = [
    "name",
    "model",
    "datasets",
    "editors",
    "compressors",
    "orders",
    "replicates",
    "edits",
    "seed",
    "metrics",
    "metric_options",
    "budgets",
    "policy",
    "snapshots",
    "topk",
    "device",
    "dtype",
    "skip_invalid",
    "resources",
    "protocol",
]


def test_fuzz_config_and_study_files():
    from lmcompose.studies import Study
    from lmcompose.sweep import SweepSettings

    rng = random.Random(2)
    good_run = {"model": "m", "steps": ["magnitude", "rtn"], "vary": "rtn.bits=8,4"}
    good_study = {
        "model": "m",
        "datasets": ["records"],
        "editors": ["memit"],
        "edits": 2,
        "compressors": [{"step": "magnitude", "vary": {"sparsity": [0.25, 0.5]}}],
    }
    deadline = time.perf_counter() + 20
    for i in range(3000):
        if i % 2:
            data = dict(good_run)
            for key in rng.sample(RUN_KEYS, rng.randint(1, 3)):
                data[key] = _random_value(rng)
            try:
                SweepSettings.from_mapping(data, where="fuzz.yaml").validate()
            except LMComposeError:
                pass
        else:
            data = json.loads(json.dumps(good_study))
            for key in rng.sample(STUDY_KEYS, rng.randint(1, 3)):
                data[key] = _random_value(rng)
            if rng.random() < 0.5:
                data["compressors"] = [_random_value(rng) for _ in range(rng.randint(0, 2))]
            try:
                Study.from_mapping(data).cells()
            except LMComposeError:
                pass
        if time.perf_counter() > deadline:
            break


def _random_size(rng: random.Random) -> int:
    return rng.choice([0, 1, 2, 50, 999, 100_001, 10**6])


def _nested(rng: random.Random, depth: int):
    value: object = rng.choice(["magnitude", 0.5, None, [], {}])
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {rng.choice(["step", "vary", "x"]): value}
    return value


def test_fuzz_study_sizes_and_nesting(tiny_folder):
    """Lists of any length, huge counts and deep nesting in every part of a study: one
    message each, and none takes long (a grid over the cell cap is refused from its sizes)."""
    from lmcompose.studies import Study

    rng = random.Random(3)
    good = yaml.safe_load(_tiny_study(Path(tempfile.mkdtemp()), tiny_folder).read_text())
    names = ["magnitude", "rtn", "wanda", "sparsegpt", "gptq", MEMIT, "magnitude:sparsity=0.1"]
    deadline = time.perf_counter() + 30
    for _ in range(400):
        data = json.loads(json.dumps(good))
        kind = rng.randrange(6)
        if kind == 0:
            data["replicates"] = rng.choice([1, 3, 10**6, 10**12, 2**70, -5, 0])
        elif kind == 1:
            n = _random_size(rng)
            data["compressors"][0]["vary"] = {"sparsity": [(i + 1) / (n + 2) for i in range(n)]}
        elif kind == 2:
            steps = [rng.choice(names) for _ in range(rng.choice([0, 1, 2, 3, 5, 12]))]
            orders = rng.choice(["all", None, "magnitude,rtn;rtn,magnitude", [steps], [[]]])
            data["compressors"] = [{"steps": steps, "vary": {"rtn.bits": [8, 4]}, "orders": orders}]
        elif kind == 3:
            data["datasets"] = [rng.choice(["counterfact", "zsre", "records"]) for _ in range(_random_size(rng) % 5000)]
        elif kind == 4:
            data[rng.choice(STUDY_KEYS)] = _nested(rng, rng.randint(1, 300))
        else:
            data["noise_floor"] = {"cells": ["magnitude"], "seeds": list(range(1, _random_size(rng) + 1))}
        start = time.perf_counter()
        try:
            Study.from_mapping(data).cells()
        except LMComposeError:
            pass
        assert time.perf_counter() - start < 10, f"validating took {time.perf_counter() - start:.0f} s (kind {kind})"
        if time.perf_counter() > deadline:
            break


class _Reached(Exception):
    """Raised where run_study would check its folder: every argument before it was accepted."""


def _random_argument(rng: random.Random):
    return rng.choice(
        [
            _random_value(rng),
            _random_value(rng),
            Path(_random_step(rng)),
            tuple(_random_value(rng, 2) for _ in range(rng.randint(0, 3))),
            object(),
            b"bytes",
            rng.choice([(1, 2), (3, 2), (0, 0), ("1", "2"), (1.5, 2)]),
        ]
    )


def test_fuzz_the_python_api_argument_types(tiny_folder, tmp_path, monkeypatch):
    """Any value for any argument of the public functions: it works, or one LMComposeError.
    (--threads and topk are left out: their upper bounds are another check's.)"""
    import lmcompose as lc

    runner = importlib.import_module("lmcompose.studies.runner")

    def reached(self):
        raise _Reached

    monkeypatch.setattr(runner.RunFolder, "check", reached)
    monkeypatch.chdir(tmp_path)  # a valid random out= or save_model= lands here
    lm = tiny_model("llama")
    study = _tiny_study(tmp_path, tiny_folder)
    calls = {
        "compose": (
            lambda **kw: lc.compose(**{"lm": lm, "steps": ["magnitude"], "metrics": ["avg_bits"], **kw}),
            ["lm", "steps", "edits", "out", "policy", "metrics", "metric_options", "seed", "ctx", "replicate"]
            + ["save_model", "overwrite", "deterministic"],
        ),
        "sweep": (
            lambda **kw: lc.sweep(
                **{"lm": lm, "steps": ["magnitude"], "vary": "magnitude.sparsity=0.5", "metrics": ["avg_bits"], **kw}
            ),
            ["lm", "steps", "vary", "orders", "edits", "replicates", "out", "policy", "metrics", "seed", "snapshots"]
            + ["save_cells", "deterministic"],
        ),
        "load_edits": (
            lambda **kw: lc.load_edits(**{"dataset": "records", "limit": 2, **kw}),
            ["dataset", "source", "limit", "seed", "replicate", "skip_invalid", "ctx"],
        ),
        "load_model": (
            lambda **kw: lc.load_model(**{"spec": str(tiny_folder), **kw}),
            ["spec", "dtype", "device", "device_map", "max_memory", "revision"],
        ),
        "run_study": (
            lambda **kw: lc.run_study(**{"study": str(study), **kw}),
            ["study", "out", "executor", "cpus_per_task", "gpus_per_task", "deterministic", "shard", "device"]
            + ["data_dir", "save_cells"],
        ),
        "merge_studies": (lambda **kw: lc.merge_studies(**{"sources": [], "out": "merged", **kw}), ["sources", "out"]),
    }
    rng = random.Random(4)
    deadline = time.perf_counter() + 30
    for _ in range(600):
        name = rng.choice(sorted(calls))
        call, keys = calls[name]
        args = {key: _random_argument(rng) for key in rng.sample(keys, rng.randint(1, 2))}
        try:
            call(**args)
        except (LMComposeError, _Reached):
            pass
        except Exception as exc:  # noqa: BLE001 - the failure names the call
            raise AssertionError(f"{name}({args!r}) raised {type(exc).__name__}: {exc}") from exc
        if time.perf_counter() > deadline:
            break
