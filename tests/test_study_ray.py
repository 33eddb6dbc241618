"""The Ray executor on a local cluster (ray.init(num_cpus=2)): the same rows as the local
executor, a killed task retried, a failing task named while every other row is kept, a killed
driver resumed exactly, and an address that does not answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from lmcompose.results import read_rows
from lmcompose.studies import Study
from lmcompose.studies.runner import run_study
from lmcompose_cli.main import app
from typer.testing import CliRunner

from tests.test_study import NUMBERS, quick

ray = pytest.importorskip("ray")
PLUGINS = Path(__file__).parent / "plugins"


def key(row):
    return (row["cell"], row["position"])


def numbers(row):
    return {k: row.get(k) for k in NUMBERS}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster whose workers see the test plugin ``crashprune`` (an entry point
    in a dist-info folder on their PYTHONPATH); the driver registers it in-process."""
    from lmcompose.plugins import register_plugin, unregister_plugin

    from tests.plugins import crash_plugin

    site = tmp_path_factory.mktemp("site")
    info = site / "lmcompose_crash_test-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lmcompose-crash-test\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[lmcompose]\ncrash = crash_plugin\n")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), str(PLUGINS), *([old] if old else [])])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    register_plugin(crash_plugin, "crash", "lmcompose-crash-test")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        unregister_plugin("crash")
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def local(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "run"
    run_study(Study.from_mapping(quick(tiny_folder)), out=out, threads=1, plots=False)
    return {key(r): numbers(r) for r in read_rows(out / "results.jsonl")}


def test_ray_gives_the_rows_of_the_local_executor(cluster, tiny_folder, local, tmp_path):
    study = Study.from_mapping(quick(tiny_folder))
    result = run_study(
        study,
        out=tmp_path,
        executor="ray",
        cpus_per_task=1,
        plots=False,
        save_cells="*|magnitude|memit>magnitude|0.5|*",
    )
    assert result.complete and not result.failures and result.report is not None
    saved = sorted(p.name for p in (tmp_path / "models").iterdir())  # written by the tasks
    assert saved == ["counterfact__magnitude__memit-magnitude__0.5__r0", "zsre__magnitude__memit-magnitude__0.5__r0"]
    assert all((tmp_path / "models" / n / "lmcompose_model.json").exists() for n in saved)
    rows = read_rows(tmp_path / "results.jsonl")
    assert len({key(r) for r in rows}) == len(rows) == len(local)
    assert {key(r): numbers(r) for r in rows} == local
    # the partition gives up no model state: every state once, as in the plan
    assert result.executed.states == study.counts()["study"].states
    assert result.executed.evaluations == study.counts()["study"].evaluations
    # the base model's locality references: computed once per edit batch by the probe, stored
    # in the run folder and handed to every task (none of which passes the base model again)
    assert result.references == 2 and len(list((tmp_path / "references").glob("*.json"))) == 2


def test_a_killed_task_is_retried_and_the_study_finishes(cluster, tiny_folder, tmp_path):
    marker = tmp_path / "crashed"
    data = quick(
        tiny_folder,
        compressors=[{"step": f"crashprune:marker={marker}", "vary": {"sparsity": [0.25, 0.5]}}],
        datasets=["records"],
    )
    result = run_study(Study.from_mapping(data), out=tmp_path / "run", executor="ray", plots=False)
    assert len(marker.read_text().split()) == 1  # one worker died, once
    assert result.complete and not result.failures
    rows = read_rows(tmp_path / "run" / "results.jsonl")
    assert len({key(r) for r in rows}) == len(rows) == 4 * 3


def test_a_task_that_keeps_failing_is_named_and_every_other_row_kept(cluster, tiny_folder, tmp_path):
    marker = tmp_path / "crashed"
    data = quick(
        tiny_folder,
        datasets=["records"],
        compressors=[
            {"step": "magnitude", "vary": {"sparsity": [0.5]}},
            {"step": f"crashprune:marker={marker},always=true", "vary": {"sparsity": [0.25]}, "name": "crash"},
        ],
    )
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(
        app, ["study", str(path), "--out", str(tmp_path / "run"), "--executor", "ray", "--no-plots"]
    )
    assert res.exit_code == 1, res.output
    assert "failed twice" in res.output and "records|crash|crashprune>memit|0.25|r0" in res.output
    assert len(marker.read_text().split()) >= 2  # tried, then retried once
    rows = read_rows(tmp_path / "run" / "results.jsonl")
    by_cell = {}
    for r in rows:
        by_cell.setdefault(r["cell"], []).append(r["position"])
    # every cell that does not start with the failing pruner is complete
    assert sorted(by_cell["records|magnitude|memit>magnitude|0.5|r0"]) == [0, 1, 2]
    assert sorted(by_cell["records|magnitude|magnitude>memit|0.5|r0"]) == [0, 1, 2]
    assert sorted(by_cell["records|crash|memit>crashprune|0.25|r0"]) == [0, 1]  # its base and edit rows are kept
    assert sorted(by_cell["records|crash|crashprune>memit|0.25|r0"]) == [0]


def test_a_driver_killed_mid_study_resumes_exactly(cluster, tiny_folder, local, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(quick(tiny_folder)))
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "lmcompose_cli.main",
        "study",
        str(path),
        "--out",
        str(out),
        "--executor",
        "ray",
        "--ray-address",
        cluster,
        "--no-plots",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = out / "results.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not results.exists() or len(read_rows(results)) < 12):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_rows(results)
    assert 12 <= len(before) < len(local)
    again = run_study(Study.from_mapping(quick(tiny_folder)), out=out, executor="ray", ray_address=cluster, plots=False)
    assert again.complete
    rows = read_rows(results)
    assert len({key(r) for r in rows}) == len(rows) == len(local)
    assert {key(r): numbers(r) for r in rows} == local


def test_a_ray_address_that_does_not_answer_is_one_message(tiny_folder, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(quick(tiny_folder)))
    start = time.time()
    res = CliRunner().invoke(
        app, ["study", str(path), "--executor", "ray", "--ray-address", "127.0.0.1:9", "--out", str(tmp_path / "run")]
    )
    assert res.exit_code == 2, res.output
    assert "no Ray cluster answers there" in res.output and "Traceback" not in res.output
    assert time.time() - start < 30
    res = CliRunner().invoke(app, ["study", str(path), "--executor", "ray", "--ray-address", "nonsense"])
    assert res.exit_code == 2 and "give host:port" in res.output


def test_per_edit_scores_travel_with_the_rows_from_the_tasks(cluster, tiny_folder, tmp_path):
    from lmcompose.results import read_per_edit

    small = quick(tiny_folder, datasets=["records"], compressors=[{"step": "magnitude", "vary": {"sparsity": [0.5]}}])
    result = run_study(Study.from_mapping(small), out=tmp_path, executor="ray", cpus_per_task=1, plots=False)
    assert result.complete and not result.failures
    rows = read_rows(tmp_path / "results.jsonl")
    lines = read_per_edit(tmp_path)
    assert set(lines) == {key(r) for r in rows} and len(read_rows(tmp_path / "per_edit.jsonl")) == len(rows)
    for r in rows:
        line = lines[key(r)]
        assert line["case_ids"] == r["edit_ids"] and (line["dataset"], line["replicate"]) == ("records", r["replicate"])
        assert sum(line["scores"]["edit_success"]) / len(line["case_ids"]) == r["edit_success"]
