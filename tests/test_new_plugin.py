"""The third-party plugin path, end to end: render the template, pip-install it into this
venv, run its own tests, see it in `lmcompose plugins`, compose it with magnitude,
uninstall it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lmcompose_cli.main import app
from typer.testing import CliRunner

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def sh(*cmd, check=True, cwd=None):
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture
def installed_plugin(tmp_path):
    """Render NAME of KIND, pip-install it editable; uninstall afterwards."""
    installed = []

    def _make(name, kind):
        res = CliRunner().invoke(app, ["new-plugin", name, "--kind", kind, "--dir", str(tmp_path)])
        assert res.exit_code == 0, res.output
        folder = tmp_path / f"lmcompose-{name}"
        sh(sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e", str(folder))
        installed.append(f"lmcompose-{name}")
        return folder

    try:
        yield _make
    finally:
        for dist in installed:
            sh(sys.executable, "-m", "pip", "uninstall", "-y", "-q", dist, check=False)
        from lmcompose.plugins import reset_plugins

        reset_plugins()


def test_intervention_template_end_to_end(installed_plugin, tmp_path):
    from lmcompose.models.tiny import tiny_model

    model = (
        tmp_path / "tiny"
    )  # made before the install: this process cannot import editable installs made after it started
    tiny_model("llama").save(model)
    folder = installed_plugin("noisetest", "intervention")
    tests = sh(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder / "tests"), cwd=folder)
    assert " passed" in tests.stdout and "failed" not in tests.stdout
    listing = json.loads(sh(str(BIN / "lmcompose"), "plugins", "--json").stdout)
    mine = next(p for p in listing if p["name"] == "noisetest")
    assert mine["distribution"] == "lmcompose-noisetest" and mine["error"] is None
    assert "intervention:noisetest" in mine["provides"]

    out = tmp_path / "run"
    sh(
        str(BIN / "lmcompose"),
        "run",
        str(model),
        "noisetest:scale=0.01",
        "magnitude:sparsity=0.3",
        "--out",
        str(out),
        "--metrics",
        "avg_bits",
        "--ppl-tokens",
        "128",
    )
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["step"] and r["step"]["name"] for r in rows] == [None, "noisetest", "magnitude"]
    assert rows[2]["sparsity"] == pytest.approx(0.3, abs=1e-3)


@pytest.mark.parametrize("kind", ["metric", "dataset"])
def test_metric_and_dataset_templates_pass_their_own_tests(installed_plugin, kind):
    folder = installed_plugin(f"{kind}test", kind)
    tests = sh(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder / "tests"), cwd=folder)
    assert " passed" in tests.stdout and "failed" not in tests.stdout


def test_new_plugin_rejects_bad_names_kinds_and_existing_folders(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["new-plugin", "Bad-Name", "--dir", str(tmp_path)])
    assert res.exit_code == 2 and "lowercase" in res.output
    res = runner.invoke(app, ["new-plugin", "ok", "--kind", "optimizer", "--dir", str(tmp_path)])
    assert res.exit_code == 2 and "--kind" in res.output
    assert runner.invoke(app, ["new-plugin", "ok", "--dir", str(tmp_path)]).exit_code == 0
    res = runner.invoke(app, ["new-plugin", "ok", "--dir", str(tmp_path)])
    assert res.exit_code == 2 and "already exists" in res.output


def test_install_maps_names_through_the_registry():
    runner = CliRunner()
    res = runner.invoke(app, ["install", "counterfact", "--dry-run"])
    assert res.exit_code == 0
    assert "-m pip install -e" in res.output and str(Path("plugins") / "counterfact") in res.output
    res = runner.invoke(app, ["install", "countrfact", "--dry-run"])
    assert res.exit_code == 2 and "Did you mean 'counterfact'" in res.output and "--package" in res.output
    res = runner.invoke(app, ["install", "--package", "lmcompose-noise==0.1", "--dry-run"])
    assert res.exit_code == 0 and "pip install lmcompose-noise==0.1" in res.output
    res = runner.invoke(app, ["uninstall", "zsre", "--dry-run"])
    assert res.exit_code == 0 and "pip uninstall -y lmcompose-zsre" in res.output
    res = runner.invoke(app, ["install", "core", "--dry-run"])
    assert res.exit_code == 2 and "built into lmcompose" in res.output


def test_install_outside_a_checkout_uses_the_distribution_name(tmp_path, monkeypatch):
    reg = tmp_path / "registry.yaml"
    reg.write_text(
        "plugins:\n  - {name: thing, kind: intervention, distribution: lmcompose-thing, path: plugins/thing}\n"
    )
    monkeypatch.setenv("LMCOMPOSE_REGISTRY", str(reg))
    res = CliRunner().invoke(app, ["install", "thing", "--dry-run"])
    assert res.exit_code == 0 and "pip install lmcompose-thing" in res.output


def test_plugins_available_marks_installed(monkeypatch):
    res = CliRunner().invoke(app, ["plugins", "--available", "--json"])
    data = {d["name"]: d for d in json.loads(res.output)}
    assert data["counterfact"]["installed"] == "0.1.0" and data["counterfact"]["local_path"].endswith("counterfact")


def test_a_broken_plugin_does_not_stop_the_listing(fake_dists):
    from lmcompose.plugins import PluginLoadWarning

    fake_dists({"lmcompose-broken": {"broken": "broken_plugin"}})
    with pytest.warns(PluginLoadWarning, match="broken"):
        res = CliRunner().invoke(app, ["plugins", "--json"])
    assert res.exit_code == 0
    data = {d["name"]: d for d in json.loads(res.output[res.output.index("[") :])}
    assert "RuntimeError" in data["broken"]["error"] and data["builtin:interventions"]["error"] is None
