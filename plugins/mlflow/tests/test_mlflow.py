"""The MLflow tracker on MLflow's local file store (offline): one MLflow run per run folder,
one nested run per cell with its metrics at every position, nothing logged twice on resume."""

from __future__ import annotations

import pytest
from lmcompose.models.tiny import tiny_model
from lmcompose.sweep import sweep

mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("LMCOMPOSE_MLFLOW", uri)
    monkeypatch.setenv("LMCOMPOSE_MLFLOW_EXPERIMENT", "tests")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


def runs(client, **tags):
    exp = client.get_experiment_by_name("tests")
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items()) or ""
    return client.search_runs([exp.experiment_id], filter_string=query)


def small(out):
    return sweep(
        tiny_model("llama"),
        ["magnitude", "rtn:group_size=32"],
        vary="rtn.bits=8,4",
        out=out,
        metrics=["avg_bits"],
        run_id="sweep1",
    )


def test_a_sweep_is_one_mlflow_run_with_a_nested_run_per_cell(store, tmp_path):
    rows = small(tmp_path / "run")
    parent = runs(store, **{"lmcompose.run_id": "sweep1", "lmcompose.kind": "sweep"})
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].data.params["vary"] == "rtn.bits=8,4"
    cells = [r for r in runs(store, **{"lmcompose.run_id": "sweep1"}) if "lmcompose.cell" in r.data.tags]
    assert len(cells) == 4 and {r.data.tags["mlflow.parentRunId"] for r in cells} == {parent[0].info.run_id}
    assert {r.info.status for r in cells} == {"FINISHED"}
    one = next(r for r in cells if r.data.tags["lmcompose.cell"] == "magnitude>rtn|4|r0")
    history = store.get_metric_history(one.info.run_id, "avg_bits")
    expected = [
        r["avg_bits"]
        for r in sorted((r for r in rows if r["cell"] == "magnitude>rtn|4|r0"), key=lambda r: r["position"])
    ]
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(expected)
    assert one.data.params["order"] == '["magnitude", "rtn"]' and one.data.params["strength"] == "4"


def test_a_resumed_sweep_logs_into_the_same_runs(store, tmp_path, monkeypatch):
    from lmcompose_mlflow.tracker import MLflowTracker

    original = MLflowTracker.row
    calls = {"n": 0}

    def killed(self, row, run):
        calls["n"] += 1
        if calls["n"] == 5:  # the row is on disk, the process dies before MLflow hears of it
            raise KeyboardInterrupt("simulated kill")
        return original(self, row, run)

    monkeypatch.setattr(MLflowTracker, "row", killed)
    with pytest.raises(KeyboardInterrupt):
        small(tmp_path / "run")
    monkeypatch.setattr(MLflowTracker, "row", original)
    import lmcompose_mlflow.plugin as plugin

    plugin._TRACKER = None  # a new process
    small(tmp_path / "run")
    all_runs = runs(store, **{"lmcompose.run_id": "sweep1"})
    assert len(all_runs) == 1 + 4
    for r in all_runs:
        if "lmcompose.cell" in r.data.tags:
            steps = sorted(m.step for m in store.get_metric_history(r.info.run_id, "avg_bits"))
            assert steps == [0, 1, 2], r.data.tags["lmcompose.cell"]  # whole, nothing twice
            assert r.info.status == "FINISHED"


def test_off_without_a_store(tmp_path, monkeypatch):
    monkeypatch.delenv("LMCOMPOSE_MLFLOW", raising=False)
    monkeypatch.chdir(tmp_path)
    small(tmp_path / "run")
    assert not (tmp_path / "mlruns").exists()
