"""The plugin manager: built-ins, entry points one by one, broken plugins, env switches,
and one test per hook (test_hook_<name>, checked by test_every_hook_has_a_test)."""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path

import pytest
from lmcompose import hookimpl, hookspecs
from lmcompose.errors import PluginLoadError
from lmcompose.plugins import (
    PluginLoadWarning,
    get_architectures,
    get_datasets,
    get_interventions,
    get_metrics,
    plugin_infos,
    register_cli_commands,
)

EXAMPLE = {"lmcompose-example": {"example": "example_plugin"}}


def test_builtins_are_plugins():
    infos = {i.name: i for i in plugin_infos()}
    for name in ("builtin:interventions", "builtin:metrics", "builtin:datasets", "builtin:architectures"):
        assert infos[name].builtin and infos[name].error is None
    assert {"magnitude", "rtn"} <= set(get_interventions().names())
    assert {"perplexity", "avg_bits", "flops", "edit"} <= set(get_metrics().names())
    assert {"records", "wikitext2", "text-file"} <= set(get_datasets().names())
    assert {"llama", "gemma3", "gpt_neox", "gpt2", "gptj", "opt"} <= set(get_architectures().names())
    assert get_interventions().entry("magnitude").distribution == "lmcompose"


def test_hook_register_interventions(fake_dists):
    fake_dists(EXAMPLE)
    entry = get_interventions().entry("scale_weights")
    assert entry.distribution == "lmcompose-example"
    assert entry.load().__name__ == "ScaleWeights"


def test_hook_register_metrics(fake_dists):
    fake_dists(EXAMPLE)
    assert get_metrics().entry("weight_norm").distribution == "lmcompose-example"


def test_hook_register_datasets(fake_dists):
    fake_dists(EXAMPLE)
    from lmcompose.compose import load_edits

    edits = load_edits("fixed_edits", limit=1)
    assert [e.case_id for e in edits] == ["a"]


def test_hook_register_architectures(fake_dists):
    fake_dists(EXAMPLE)
    spec = get_architectures().get("llama_alias")
    assert spec.model_types == ("llama_alias_for_tests",)


def test_hook_register_commands(fake_dists):
    fake_dists(EXAMPLE)
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()

    @app.command()
    def other() -> None:  # a second command so typer keeps subcommand names
        pass

    register_cli_commands(app)
    result = CliRunner().invoke(app, ["hello-test"])
    assert result.exit_code == 0, result.output
    assert "hello from the test plugin" in result.output


class _Recorder:
    """An event plugin that records what the host tells it (row_written, run_closed)."""

    def __init__(self, fail: bool = False):
        self.rows, self.closed, self.fail = [], [], fail

    @hookimpl
    def row_written(self, row, run):
        if self.fail:
            raise RuntimeError("tracker is down")
        self.rows.append((row["position"], run.run_id, run.kind, run.folder))

    @hookimpl
    def run_closed(self, run, status):
        self.closed.append((run.run_id, status))


def test_hook_row_written(register, tmp_path):
    from lmcompose.compose import compose
    from lmcompose.models.tiny import tiny_model
    from lmcompose.results import read_rows

    rec = _Recorder()
    register(rec, "recorder")
    rows = compose(tiny_model("llama"), ["magnitude", "rtn"], metrics=["avg_bits"], out=tmp_path, run_id="r1")
    assert [r[0] for r in rec.rows] == [0, 1, 2] == [r["position"] for r in rows]
    assert {r[1:] for r in rec.rows} == {("r1", "run", tmp_path)}
    # a tracker that raises is reported once and loses nothing: every row is on disk
    broken = _Recorder(fail=True)
    register(broken, "broken-tracker")
    with pytest.warns(PluginLoadWarning, match="broken-tracker.*row_written raised RuntimeError: tracker is down"):
        compose(tiny_model("llama"), ["magnitude"], metrics=["avg_bits"], out=tmp_path / "b", run_id="r2")
    assert [r["position"] for r in read_rows(tmp_path / "b" / "results.jsonl")] == [0, 1]


def test_hook_run_closed(register, tmp_path):
    from lmcompose.compose import compose
    from lmcompose.engine import RunFolder
    from lmcompose.models.tiny import tiny_model
    from lmcompose.plugins import notify_run_closed

    rec = _Recorder()
    register(rec, "recorder")
    compose(tiny_model("llama"), ["magnitude"], metrics=["avg_bits"], out=tmp_path / "a", run_id="r3")
    assert rec.closed == [("r3", "finished")]
    with pytest.raises(RuntimeError), RunFolder(tmp_path / "b", "r4", "sweep") as folder:
        folder.write_config()
        raise RuntimeError("interrupted")
    assert rec.closed[-1] == ("r4", "failed")
    RunFolder(tmp_path / "c", "r5", "sweep").open().close()  # a check that writes nothing owes no event
    notify_run_closed(RunFolder(tmp_path / "c", "r5", "sweep").info, "incomplete")
    assert rec.closed[-1] == ("r5", "incomplete") and len(rec.closed) == 3


def test_every_hook_has_a_test():
    source = Path(__file__).read_text()
    hooks = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "lmcompose_spec")]
    assert len(hooks) == 7
    missing = [h for h in hooks if not re.search(rf"def test_hook_{h}\(", source)]
    assert not missing, f"hooks without a test: {missing}"


def test_a_broken_plugin_is_reported_and_the_rest_keep_working(fake_dists):
    fake_dists({"lmcompose-broken": {"broken": "broken_plugin"}, **EXAMPLE})
    with pytest.warns(PluginLoadWarning, match="broken"):
        infos = {i.name: i for i in plugin_infos()}
    assert "RuntimeError: this plugin is broken on purpose" in infos["broken"].error
    assert infos["broken"].distribution == "lmcompose-broken"
    assert infos["example"].error is None
    assert "scale_weights" in get_interventions()
    assert "magnitude" in get_interventions()


def test_strict_mode_makes_a_broken_plugin_fatal(fake_dists, monkeypatch):
    monkeypatch.setenv("LMCOMPOSE_STRICT_PLUGINS", "1")
    fake_dists({"lmcompose-broken": {"broken": "broken_plugin"}})
    with pytest.raises(PluginLoadError, match="broken"):
        plugin_infos()


def test_a_hook_that_raises_is_reported(fake_dists):
    fake_dists({"lmcompose-raising": {"raising": "raising_hook_plugin"}})
    with pytest.warns(PluginLoadWarning):
        infos = {i.name: i for i in plugin_infos()}
    assert "metric registration failed on purpose" in infos["raising"].error
    assert "perplexity" in get_metrics()


def test_a_hookimpl_with_a_wrong_signature_is_reported(fake_dists):
    fake_dists({"lmcompose-badsig": {"badsig": "bad_signature_plugin"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        infos = {i.name: i for i in plugin_infos()}
    assert infos["badsig"].error and "registrar" in infos["badsig"].error
    assert "magnitude" in get_interventions()


def test_a_duplicate_name_keeps_the_first_and_reports_the_later_naming_both(fake_dists):
    fake_dists({"lmcompose-dup": {"dup": "duplicate_plugin"}, **EXAMPLE})
    with pytest.warns(PluginLoadWarning, match=r"registered twice: by lmcompose and by lmcompose-dup.*was skipped"):
        registry = get_interventions()
    assert registry.entry("magnitude").distribution == "lmcompose"  # the built-in keeps its name
    assert "scale_weights" in registry  # every other plugin keeps working
    infos = {i.name: i for i in plugin_infos()}
    assert "registered twice" in infos["dup"].error and infos["example"].error is None
    from lmcompose_cli.main import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["plugins"])
    assert res.exit_code == 0, res.output


def test_a_duplicate_name_is_fatal_with_strict(fake_dists, monkeypatch):
    monkeypatch.setenv("LMCOMPOSE_STRICT_PLUGINS", "1")
    fake_dists({"lmcompose-dup": {"dup": "duplicate_plugin"}})
    with pytest.raises(PluginLoadError, match="lmcompose-dup"):
        get_interventions()


def test_load_plugins_empty_loads_no_third_party_plugin(fake_dists, monkeypatch):
    monkeypatch.setenv("LMCOMPOSE_LOAD_PLUGINS", "")
    fake_dists(EXAMPLE)
    assert "scale_weights" not in get_interventions()
    assert "magnitude" in get_interventions()


def test_load_plugins_allow_list(fake_dists, monkeypatch):
    monkeypatch.setenv("LMCOMPOSE_LOAD_PLUGINS", "example")
    fake_dists({"lmcompose-broken": {"broken": "broken_plugin"}, **EXAMPLE})
    names = {i.name for i in plugin_infos()}
    assert "example" in names and "broken" not in names


def test_block_plugins(fake_dists, monkeypatch):
    monkeypatch.setenv("LMCOMPOSE_BLOCK_PLUGINS", "broken,lmcompose-example")
    fake_dists({"lmcompose-broken": {"broken": "broken_plugin"}, **EXAMPLE})
    names = {i.name for i in plugin_infos()}
    assert "example" not in names and "broken" not in names


def test_in_process_registration_is_undone(register):
    from tests.plugins import example_plugin

    register(example_plugin, "example-inproc")
    assert "weight_norm" in get_metrics()
    # the fixture unregisters on teardown; checked by the next test


def test_in_process_registration_was_undone():
    assert "weight_norm" not in get_metrics()


def test_every_hook_is_documented_with_its_exact_signature():
    docs = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    for name, f in inspect.getmembers(hookspecs, inspect.isfunction):
        if not hasattr(f, "lmcompose_spec"):
            continue
        signature = f"{name}{inspect.signature(f)}".replace("'", "")
        assert f"### {name}\n" in docs, f"no section for {name}"
        assert signature in docs, f"docs/plugins.md lacks the exact signature {signature}"


def test_registry_yaml_matches_what_is_registered():
    import yaml

    data = yaml.safe_load((Path(__file__).parent.parent / "registry.yaml").read_text())
    registries = {
        "interventions": get_interventions(),
        "metrics": get_metrics(),
        "datasets": get_datasets(),
        "architectures": get_architectures(),
    }
    for plugin in data["plugins"]:
        for field in ("name", "kind", "distribution", "summary"):
            assert plugin.get(field), (plugin.get("name"), field)
        for kind, names in plugin.get("provides", {}).items():
            for n in names:
                assert registries[kind].entry(n).distribution == plugin["distribution"]
