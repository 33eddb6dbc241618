"""What changes a number is recorded and checked: config.yaml's ``numerics:`` (thread count,
deterministic mode, torch and its BLAS, the metrics' batch sizes), a resume with another value
refused naming it and the fix, folders written before it was recorded still resumed, and
``--deterministic``: bit-identical rows, and an op without a deterministic kernel named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from lmcompose import Intervention, hookimpl
from lmcompose.compose import RunSettings, compose
from lmcompose.engine.numerics import blas_backend, nondeterministic_op
from lmcompose.engine.run_folder import RunFolder
from lmcompose.errors import ConfigError, UsageError
from lmcompose.models.tiny import tiny_model
from lmcompose.results import read_rows, read_yaml
from lmcompose.studies import Study, StudyError
from lmcompose.studies.runner import StudyWork, merge_studies, run_study
from lmcompose_cli.main import app
from typer.testing import CliRunner

from tests.test_study import NUMBERS, sample

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--ppl-tokens", "128", "--ppl-seqlen", "64", "--metrics", "perplexity,avg_bits"]


@pytest.fixture(autouse=True)
def _numerics_restored():
    """Every test leaves torch's thread count and deterministic mode as it found them."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def run(tiny_folder: str, out: Path, *extra: str):
    return invoke("run", tiny_folder, "magnitude:sparsity=0.5", "--out", str(out), *QUICK, *extra)


def numerics(folder: Path) -> dict:
    return read_yaml(folder / "config.yaml")["numerics"]


def tiny_study(model: str, **over) -> Study:
    data = {
        "name": "tiny-numerics",
        "model": model,
        "datasets": [{"name": "counterfact", "source": sample("counterfact", "counterfact_sample.json")}],
        "compressors": [{"steps": ["magnitude", "rtn:group_size=32"], "vary": {"rtn.bits": [8, 4]}}],
        "metrics": ["perplexity", "avg_bits"],
        "budgets": {"ppl_tokens": 128, "ppl_seqlen": 64},
        **over,
    }
    return Study.from_mapping(data)


# -- what is recorded ------------------------------------------------------------------------


def test_config_records_the_numerics_of_the_run(tiny_folder, tmp_path):
    res = run(tiny_folder, tmp_path / "r", "--threads", "1")
    assert res.exit_code == 0, res.output
    got = numerics(tmp_path / "r")
    assert got["threads"] == 1 and got["deterministic"] is False
    assert got["torch"] == str(torch.__version__)
    assert {k: got[k] for k in ("blas", "lapack")} == {k: blas_backend()[k] for k in ("blas", "lapack")}
    assert got["batch_sizes"] == {"perplexity": 2}  # the perplexity metric's default
    # what a metric option sets is what is recorded; edit's batch size is recorded when it runs
    lm = tiny_model("llama")
    compose(
        lm,
        ["magnitude"],
        out=tmp_path / "c",
        metrics=["perplexity", "edit"],
        metric_options={"perplexity": {"seqlen": 64, "max_tokens": 128, "batch_size": 3}, "edit": {"batch_size": 5}},
        threads=2,
    )
    assert numerics(tmp_path / "c")["batch_sizes"] == {"perplexity": 3, "edit": 5}
    assert numerics(tmp_path / "c")["threads"] == 2


def test_without_threads_a_run_records_torchs_own_count(tiny_folder, tmp_path):
    assert run(tiny_folder, tmp_path / "r").exit_code == 0
    assert numerics(tmp_path / "r")["threads"] == torch.get_num_threads()


def test_blas_backend_is_read_from_torchs_build_configuration():
    mkl = (
        "  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for Intel(R) 64\n"
        "  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71049cd69a3df32adcccb623b12cd7baa22)\n"
        "  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, LAPACK_INFO=mkl, PERF_WITH_AVX=1\n"
    )
    assert blas_backend(mkl) == {"blas": "mkl", "lapack": "mkl", "mkl": "2024.2", "onednn": "3.12.0"}
    openblas = "  - Build settings: BLAS_INFO=open, BUILD_TYPE=Release, LAPACK_INFO=open, TORCH_VERSION=2.13.0\n"
    assert blas_backend(openblas) == {"blas": "open", "lapack": "open"}
    assert blas_backend("PyTorch built with:\n") == {"blas": "unknown", "lapack": "unknown"}
    assert blas_backend()["blas"] != "unknown"  # the installed torch says


def test_threads_and_deterministic_are_settings_outside_the_run_id():
    base = RunSettings(model="m", steps=["magnitude"])
    other = RunSettings(model="m", steps=["magnitude"], threads=3, deterministic=True)
    assert other.run_id() == base.run_id()  # a resume with another value is refused by the numerics check
    assert "threads" not in other.resolved() and "deterministic" not in other.resolved()
    for key, value, message in [
        ("threads", 0, "threads: 0 is below 1; give a whole number of threads from 1 to 1024"),
        ("threads", "2", "threads: expected a whole number"),
        ("deterministic", "yes", "deterministic: expected true or false"),
    ]:
        with pytest.raises(ConfigError, match=message):
            RunSettings.from_mapping({"model": "m", "steps": ["magnitude"], key: value}, where="c.yaml")


# -- resume ----------------------------------------------------------------------------------


def test_a_resume_with_another_thread_count_is_refused_naming_it(tiny_folder, tmp_path, monkeypatch):
    out = tmp_path / "r"
    assert run(tiny_folder, out, "--threads", "1").exit_code == 0
    rows = (out / "results.jsonl").read_text()

    def no_load(*_args, **_kw):
        raise AssertionError("the model was loaded before the resume was refused")

    with monkeypatch.context() as m:
        m.setattr(RunSettings, "load_model", no_load)
        res = run(tiny_folder, out, "--threads", "2")
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "threads: 1 recorded, 2 now" in text
    assert "Rerun as recorded (--threads 1), or start a new run in another --out" in text
    assert "Traceback" not in res.output
    assert (out / "results.jsonl").read_text() == rows
    again = run(tiny_folder, out, "--threads", "1")
    assert again.exit_code == 0 and "already in its results.jsonl" in again.output


def test_a_resume_that_turns_deterministic_mode_on_is_refused(tiny_folder, tmp_path):
    out = tmp_path / "r"
    assert run(tiny_folder, out, "--threads", "1").exit_code == 0
    res = run(tiny_folder, out, "--deterministic")
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "deterministic: false recorded, true now" in text
    assert "Rerun as recorded (without --deterministic)" in text
    assert "threads" not in text  # --deterministic's one thread is what was recorded


def test_a_sweep_resume_with_other_numerics_is_refused(tmp_path):
    from lmcompose.sweep import sweep

    def swept(**kw):
        return sweep(
            tiny_model("llama"),
            ["magnitude", "rtn:group_size=32"],
            vary="rtn.bits=8,4",
            orders="magnitude,rtn",
            out=tmp_path,
            metrics=["avg_bits"],
            **kw,
        )

    assert len(swept(threads=1)) == 6
    with pytest.raises(UsageError, match=r"threads: 1 recorded, 2 now.*--threads 1"):
        swept(threads=2)
    assert swept(threads=1) == []


def test_a_study_resume_with_other_numerics_is_refused(tiny_folder, tmp_path):
    study = tiny_study(tiny_folder)
    first = run_study(study, out=tmp_path, threads=1, report=False)
    assert first.complete and numerics(tmp_path)["threads"] == 1
    with pytest.raises(UsageError, match=r"threads: 1 recorded, 2 now"):
        run_study(study, out=tmp_path, threads=2, report=False)
    with pytest.raises(UsageError, match=r"deterministic: false recorded, true now"):
        run_study(tiny_study(tiny_folder, deterministic=True), out=tmp_path, report=False)
    assert run_study(study, out=tmp_path, threads=1, report=False).rows == 0


def test_a_run_written_before_numerics_were_recorded_still_resumes(tiny_folder, tmp_path):
    out = tmp_path / "r"
    assert run(tiny_folder, out, "--threads", "1").exit_code == 0
    config = read_yaml(out / "config.yaml")
    del config["numerics"]
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = (out / "config.yaml").read_bytes()
    res = run(tiny_folder, out, "--threads", "2")
    assert res.exit_code == 0 and "already in its results.jsonl" in res.output
    assert (out / "config.yaml").read_bytes() == before  # not rewritten


@pytest.mark.parametrize("run_folder", ["run", "protocol-run", "editors-run"])
def test_the_committed_replication_folders_resume_unchanged(run_folder, tmp_path):
    """docs/replication's config.yaml files predate numerics: a resume with its inputs and
    any numerics is accepted, and the file is left as it is."""
    committed = REPO / "docs" / "replication" / run_folder / "config.yaml"
    shutil.copy(committed, tmp_path / "config.yaml")
    config = read_yaml(committed)
    assert "numerics" not in config
    current = {"threads": 7, "deterministic": True, "torch": "0.0", "blas": "none", "batch_sizes": {"edit": 1}}
    with RunFolder(tmp_path, config["run_id"], "study", numerics=current) as folder:
        folder.write_config(inputs=config["inputs"], numerics=current)
    assert (tmp_path / "config.yaml").read_bytes() == committed.read_bytes()
    assert not (tmp_path / "results.jsonl").exists()


def test_a_value_recorded_is_checked_and_one_not_recorded_is_accepted(tmp_path):
    recorded = {"threads": 2, "torch": "2.13.0", "batch_sizes": {"perplexity": 2}}
    with RunFolder(tmp_path, "r1", "run") as folder:
        folder.write_config(inputs={"model_fingerprint": "f"}, numerics=recorded)
    # a value the run did not record (deterministic, edit's batch size) is accepted
    more = {**recorded, "deterministic": False, "batch_sizes": {"perplexity": 2, "edit": 16}}
    with RunFolder(tmp_path, "r1", "run", numerics=more) as folder:
        folder.write_config(inputs={"model_fingerprint": "f"}, numerics=more)
    # every value that differs is named in one message, with the recorded value and the current one
    changed = {**more, "threads": 4, "torch": "2.14.0", "batch_sizes": {"perplexity": 8}}
    with pytest.raises(UsageError) as err, RunFolder(tmp_path, "r1", "run", numerics=changed):
        pass
    text = str(err.value)
    for part in (
        "threads: 2 recorded, 4 now",
        'torch: "2.13.0" recorded, "2.14.0" now',
        "batch_sizes.perplexity: 2 recorded, 8 now",
        "--threads 2",
        "another --out",
    ):
        assert part in text, text
    assert read_yaml(tmp_path / "config.yaml")["numerics"] == recorded


def test_shards_computed_with_other_thread_counts_are_not_merged(tiny_folder, tmp_path):
    study = tiny_study(tiny_folder)
    one = run_study(study, out=tmp_path / "s1", shard="1/2", threads=1, report=False).folder
    two = run_study(study, out=tmp_path / "s2", shard="2/2", threads=1, report=False).folder
    config = read_yaml(two / "config.yaml")
    config["numerics"]["threads"] = 2
    (two / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(UsageError, match=r"other numerics \(threads: 1 in .*s1, 2 in .*s2\)"):
        merge_studies([one, two], tmp_path / "merged", report=False)
    config["numerics"]["threads"] = 1
    (two / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    added, missing, _ = merge_studies([one, two], tmp_path / "merged", report=False)
    assert added > 0 and not missing
    assert numerics(tmp_path / "merged")["threads"] == 1


# -- deterministic mode ----------------------------------------------------------------------


def rows_of(folder: Path) -> list[dict]:
    return [{k: r.get(k) for k in ("cell", "position", *NUMBERS)} for r in read_rows(folder / "results.jsonl")]


def test_deterministic_runs_give_bit_identical_rows(tiny_folder, tmp_path):
    for name in ("a", "b"):
        res = invoke(
            "run",
            tiny_folder,
            "magnitude:sparsity=0.5",
            "rtn:bits=4,group_size=32",
            "--out",
            str(tmp_path / name),
            "--ppl-tokens",
            "128",
            "--ppl-seqlen",
            "64",
            "--edits",
            "2",
            "--deterministic",
        )
        assert res.exit_code == 0, res.output
        assert numerics(tmp_path / name)["deterministic"] is True and numerics(tmp_path / name)["threads"] == 1
    a, b = rows_of(tmp_path / "a"), rows_of(tmp_path / "b")
    assert len(a) == 3 and a[1]["perplexity"] is not None and a[1]["edit_success"] is not None
    assert json.dumps(a) == json.dumps(b)  # every digit


def test_deterministic_takes_the_thread_count_given(tiny_folder, tmp_path):
    assert run(tiny_folder, tmp_path / "r", "--deterministic", "--threads", "2").exit_code == 0
    assert numerics(tmp_path / "r")["threads"] == 2 and numerics(tmp_path / "r")["deterministic"] is True


def test_deterministic_sweep_from_the_cli(tiny_folder, tmp_path):
    res = invoke(
        "sweep",
        tiny_folder,
        "magnitude",
        "rtn:group_size=32",
        "--vary",
        "rtn.bits=8,4",
        "--orders",
        "magnitude,rtn",
        "--metrics",
        "avg_bits",
        "--out",
        str(tmp_path / "s"),
        "--deterministic",
        "--no-plots",
    )
    assert res.exit_code == 0, res.output
    assert numerics(tmp_path / "s")["deterministic"] is True and numerics(tmp_path / "s")["threads"] == 1


def test_a_study_file_turns_deterministic_mode_on_and_checks_its_value(tiny_folder, tmp_path):
    with pytest.raises(StudyError, match="deterministic: expected true or false"):
        tiny_study(tiny_folder, deterministic="yes")
    study = tiny_study(tiny_folder, deterministic=True)
    assert study.id == tiny_study(tiny_folder).id  # how a study computes is not what it computes
    result = run_study(study, out=tmp_path, report=False)
    assert result.complete
    assert numerics(tmp_path)["deterministic"] is True and numerics(tmp_path)["threads"] == 1
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study(tiny_folder).data))
    res = invoke("study", str(path), "--out", str(tmp_path / "cli"), "--deterministic", "--no-plots")
    assert res.exit_code == 0, res.output
    assert numerics(tmp_path / "cli")["deterministic"] is True


def test_a_ray_task_sets_deterministic_mode_and_reports_its_numerics(tiny_folder):
    """What each Ray task runs first (the probe and every task call ``prepare``), in this
    process: the worker's thread count and deterministic mode, and what it records."""
    from lmcompose.engine.ray_executor import _probe

    study = tiny_study(tiny_folder)
    work = StudyWork(study.data, study.name, study.device)
    threads = torch.get_num_threads()
    try:
        inputs, recorded = _probe(work, 1, True, {})
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
        assert recorded["deterministic"] is True and recorded["threads"] == 1
        assert recorded["batch_sizes"] == {"perplexity": 2} and "model_fingerprint" in inputs
        work.prepare(1, False)  # a worker's next task without it turns it off
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


# -- an op without a deterministic kernel ------------------------------------------------------


class AlertingPrune(Intervention):
    """A test step that runs an op torch has no deterministic kernel for (torch's own alert,
    as its Python kernels raise it; ``real=True``: max_unpool1d, whose C++ kernel does)."""

    name = "alerting"
    kind = "prune"

    def apply(self, lm, ctx):
        from torch._prims_common import alert_not_deterministic

        alert_not_deterministic("my_op")
        return self.report()


class UnpoolPrune(Intervention):
    name = "unpooling"
    kind = "prune"

    def apply(self, lm, ctx):
        torch.nn.functional.max_unpool1d(torch.ones(1, 1, 2), torch.tensor([[[0, 1]]]), 2)
        return self.report()


class AlertingPlugin:
    @hookimpl
    def register_interventions(self, register):
        register(AlertingPrune, name="alerting", summary="test step without a deterministic kernel")
        register(UnpoolPrune, name="unpooling", summary="test step running max_unpool1d")


@pytest.fixture
def alerting(register):
    register(AlertingPlugin(), "alerting")


@pytest.mark.parametrize("step,op", [("alerting", "my_op"), ("unpooling", "max_unpool")])
def test_an_op_without_a_deterministic_kernel_is_one_message_naming_it(alerting, tiny_folder, tmp_path, step, op):
    res = invoke("run", tiny_folder, step, "--out", str(tmp_path / "r"), *QUICK, "--deterministic")
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert f"step '{step}'" in text and op in text and "no deterministic implementation" in text
    assert "run without --deterministic, or use another method" in text
    assert "Traceback" not in res.output and "internal error" not in res.output
    # without deterministic mode the same step runs
    assert invoke("run", tiny_folder, step, "--out", str(tmp_path / "ok"), *QUICK).exit_code == 0


def test_the_python_api_names_the_op_and_restores_the_mode(alerting):
    with pytest.raises(UsageError, match=r"step 'alerting' .*uses the torch op my_op"):
        compose(tiny_model("llama"), ["alerting"], metrics=["avg_bits"], deterministic=True)
    assert not torch.are_deterministic_algorithms_enabled()


def test_the_op_is_read_from_torchs_message():
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError) as err:
            torch.nn.functional.max_unpool1d(torch.ones(1, 1, 2), torch.tensor([[[0, 1]]]), 2)
    finally:
        torch.use_deterministic_algorithms(False)
    assert nondeterministic_op(err.value).startswith("max_unpool")
    assert (
        nondeterministic_op(
            RuntimeError(
                "median CUDA with indices output does not have a deterministic implementation, but you set ..."
            )
        )
        == "median CUDA with indices output"
    )
    assert nondeterministic_op(RuntimeError("shape mismatch")) is None
    assert nondeterministic_op(ValueError("x does not have a deterministic implementation")) is None
