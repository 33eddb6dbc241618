from __future__ import annotations

import pytest
from lmcompose.compose import RunSettings, StepSpec, build_intervention, parse_step
from lmcompose.errors import ConfigError, UnknownNameError


def test_parse_step_splits_on_the_first_colon_only():
    spec = parse_step("magnitude:structure=2:4")
    assert spec == StepSpec("magnitude", {"structure": "2:4"})
    assert str(spec) == "magnitude:structure=2:4"


def test_parse_step_several_fields_and_bare_names():
    assert parse_step("rtn:bits=3,group_size=64") == StepSpec("rtn", {"bits": "3", "group_size": "64"})
    assert parse_step("rtn") == StepSpec("rtn", {})


@pytest.mark.parametrize("mapping", [{"name": "rtn", "bits": 3}, {"rtn": {"bits": 3}}])
def test_parse_step_from_yaml_mappings(mapping):
    assert parse_step(mapping) == StepSpec("rtn", {"bits": 3})


@pytest.mark.parametrize("bad", ["rtn:bits", "rtn:", "rtn:bits=3,bits=4", "", "rtn:=3"])
def test_parse_step_rejects_malformed_steps(bad):
    with pytest.raises(ConfigError):
        parse_step(bad)


def test_values_are_coerced_by_field_type():
    step = build_intervention(
        parse_step("rtn:bits=3,group_size=-1,symmetric=true,targets=mlp.down_proj+self_attn.o_proj")
    )
    c = step.config
    assert (c.bits, c.group_size, c.symmetric) == (3, -1, True)
    assert c.targets == ["mlp.down_proj", "self_attn.o_proj"]


def test_unknown_intervention_suggests_a_name():
    with pytest.raises(UnknownNameError, match="Did you mean 'magnitude'"):
        build_intervention(parse_step("magnitud:sparsity=0.5"))


def test_unknown_field_suggests_a_field():
    with pytest.raises(UnknownNameError, match="Did you mean 'sparsity'"):
        build_intervention(parse_step("magnitude:sparsty=0.5"))


@pytest.mark.parametrize(
    "step",
    [
        "magnitude:sparsity=1.0",
        "magnitude:sparsity=-0.1",
        "rtn:bits=1",
        "rtn:bits=9",
        "rtn:bits=3.5",
        "magnitude:sparsity=abc",
        "rtn:symmetric=maybe",
    ],
)
def test_out_of_range_or_wrong_type_values_are_config_errors(step):
    with pytest.raises(ConfigError) as exc:
        build_intervention(parse_step(step))
    assert parse_step(step).name in str(exc.value)


def test_n_m_structure_sets_the_sparsity_and_rejects_a_contradiction():
    assert build_intervention(parse_step("magnitude:structure=2:4")).config.sparsity == 0.5
    assert build_intervention(parse_step("magnitude:structure=1:4")).config.sparsity == 0.75
    with pytest.raises(ConfigError, match="contradicts"):
        build_intervention(parse_step("magnitude:structure=2:4,sparsity=0.3"))
    with pytest.raises(ConfigError, match="N:M"):
        build_intervention(parse_step("magnitude:structure=4:2"))
    with pytest.raises(ConfigError, match="unstructured"):
        build_intervention(parse_step("magnitude:structure=blocky"))


def test_run_settings_from_yaml_and_flag_overrides(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "model: smollm2-135m\nsteps:\n  - magnitude:sparsity=0.3\n  - {rtn: {bits: 3}}\nseed: 4\nmetric_options:\n  "
        "perplexity: {max_tokens: 2048}\n"
    )
    s = RunSettings.from_file(cfg).merged(seed=5, out=None)
    assert s.seed == 5 and s.model == "smollm2-135m"
    steps, metrics = s.validate()
    assert [st.name for st in steps] == ["magnitude", "rtn"] and steps[1].config.bits == 3
    assert next(m for m in metrics if m.name == "perplexity").config.max_tokens == 2048
    assert s.resolved()["steps"] == ["magnitude:sparsity=0.3", "rtn:bits=3"]


def test_run_settings_reject_unknown_keys_and_bad_yaml(tmp_path):
    bad_key = tmp_path / "a.yaml"
    bad_key.write_text("modle: x\n")
    with pytest.raises(UnknownNameError, match="Did you mean 'model'"):
        RunSettings.from_file(bad_key)
    bad_yaml = tmp_path / "b.yaml"
    bad_yaml.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunSettings.from_file(bad_yaml)
    with pytest.raises(ConfigError, match="does not exist"):
        RunSettings.from_file(tmp_path / "missing.yaml")
    not_mapping = tmp_path / "c.yaml"
    not_mapping.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        RunSettings.from_file(not_mapping)


@pytest.mark.parametrize(
    "field,value,match", [("policy", "sometimes", "policy"), ("edits", 0, "edits"), ("dtype", "int8", "dtype")]
)
def test_run_settings_validate_scalars(field, value, match):
    s = RunSettings(model="m", steps=["rtn"]).merged(**{field: value})
    with pytest.raises(ConfigError, match=match):
        s.validate()


def test_metric_options_for_unknown_metric():
    s = RunSettings(model="m", steps=["rtn"], metric_options={"perplexty": {}})
    with pytest.raises(UnknownNameError, match="perplexity"):
        s.validate()


def test_dataset_must_be_an_edit_dataset():
    with pytest.raises(ConfigError, match="text corpus"):
        RunSettings(model="m", steps=["rtn"], dataset="wikitext2").validate()


def test_a_dataset_registered_without_kind_is_checked_by_its_class(monkeypatch):
    """A text corpus registered with no kind= is still refused as an edit dataset: the loaded
    class decides, not the registration."""
    from lmcompose.compose import RunSettings, edit_dataset_class
    from lmcompose.plugins import get_datasets

    registry = get_datasets()
    entry = registry.entry("wikitext2")
    monkeypatch.setattr(entry, "extra", {})  # as if registered without kind="text"
    with pytest.raises(ConfigError, match="'wikitext2' is a text corpus, not an edit dataset"):
        edit_dataset_class("wikitext2")
    with pytest.raises(ConfigError, match="not an edit dataset"):
        RunSettings(model="m", steps=["magnitude"], dataset="wikitext2").validate()
    assert edit_dataset_class("records").__name__


def test_a_field_added_later_is_left_out_of_the_identity_at_its_default():
    """metadata since: results recorded before the field existed keep their identity (resume)."""
    from dataclasses import dataclass, field

    from lmcompose.api import config_to_dict

    @dataclass
    class Cfg:
        a: int = 1
        b: int = field(default=0, metadata={"help": "added later", "since": "0.3"})

    assert config_to_dict(Cfg()) == {"a": 1}
    assert config_to_dict(Cfg(b=2)) == {"a": 1, "b": 2}
    from lmcompose.compose import build_intervention, parse_step

    assert "batches" not in config_to_dict(build_intervention(parse_step("memit")).config)
    assert config_to_dict(build_intervention(parse_step("memit:batches=3")).config)["batches"] == 3
