"""One settings layer: run, sweep and study settings declared once, grouped by concern, and
checked by the mechanism that checks step configs, so one mistake reads the same wherever it
is made (a config file, the Python API, a study file, a step's config)."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

import pytest
from lmcompose.api.config import Check, build_config, check_field, setting
from lmcompose.errors import ConfigError
from lmcompose.settings import CONCERNS, concerns
from lmcompose.studies import Study, StudyError
from lmcompose.sweep import SweepSettings

compose_module = importlib.import_module("lmcompose.compose")
RunSettings = compose_module.RunSettings


def study_data(**over: object) -> dict[str, object]:
    data: dict[str, object] = {
        "model": "m",
        "datasets": ["counterfact"],
        "editors": ["memit"],
        "edits": 2,
        "compressors": [{"step": "magnitude", "vary": {"sparsity": [0.5]}}],
    }
    data.update(over)
    return data


def test_every_setting_belongs_to_one_concern_and_says_what_it_takes():
    for cls in (RunSettings, SweepSettings):
        groups = concerns(cls)
        assert list(groups) == [c for c in CONCERNS if c in groups]
        names = [n for fields in groups.values() for n in fields]
        assert sorted(names) == sorted(f.name for f in dataclasses.fields(cls))  # each once
        for f in dataclasses.fields(cls):
            assert isinstance(f.metadata.get("check"), Check), f.name
    run, sweep = concerns(RunSettings), concerns(SweepSettings)
    assert run["model"][:3] == ["model", "device", "dtype"] and "seed" in run["data"]
    assert {"vary", "orders", "replicates"} <= set(sweep["grid"]) and "topk" in sweep["evaluation"]


# the same mistake, made in a run's config file, a sweep's, the Python API and a study file:
# the same message after the key's path
SAME = [
    ("seed", 2**40, "seed: 1099511627776 is above 4294967295; give a whole number from 0 to 4294967295, e.g. 0"),
    ("seed", 1.5, "seed: expected a whole number from 0 to 4294967295, e.g. 0; got float 1.5"),
    ("edits", 0, "edits: 0 is below 1; give a whole number >= 1, e.g. 50"),
    ("edits", True, "edits: expected a whole number >= 1, e.g. 50; got the boolean true"),
    ("skip_invalid", "maybe", "skip_invalid: expected true or false; got the string 'maybe'"),
    ("deterministic", 1, "deterministic: expected true or false; got int 1"),
    ("policy", "projekt", "policy: the string 'projekt' is not one of none, project, recompress"),
    ("dtype", "int8", "dtype: the string 'int8' is not one of float32, bfloat16, float16, auto"),
    ("model", 5, "model: expected a model name (a named model, a folder, a .gguf file or a hub id)"),
]


@pytest.mark.parametrize(("key", "value", "message"), SAME, ids=[f"{k}={v!r}" for k, v, _ in SAME])
def test_one_mistake_reads_the_same_in_a_run_a_sweep_and_a_study(key, value, message):
    with pytest.raises(ConfigError) as run:
        RunSettings.from_mapping({"model": "m", "steps": ["magnitude"], key: value}, where="run.yaml")
    with pytest.raises(ConfigError) as sweep:
        SweepSettings.from_mapping({"model": "m", "steps": ["magnitude"], key: value}, where="sweep.yaml")
    with pytest.raises(StudyError) as study:
        Study.from_mapping(study_data(**{key: value}))
    assert str(run.value).startswith(f"run.yaml: {message}")
    assert str(sweep.value).startswith(f"sweep.yaml: {message}")
    assert str(study.value).startswith(message)


def test_a_sweep_key_reads_the_same_in_a_sweep_and_a_study():
    for key, value, message in [
        ("replicates", 0, "replicates: 0 is below 1; give a whole number >= 1, e.g. 2"),
        ("topk", 10**6, "topk: 1000000 is above 1000; give a whole number from 0 to 1000, e.g. 5"),
        ("snapshots", "tape", "snapshots: the string 'tape' is not one of memory, disk"),
    ]:
        with pytest.raises(ConfigError, match="^s.yaml: " + message.replace("(", r"\(")):
            SweepSettings.from_mapping({"model": "m", "steps": ["magnitude"], key: value}, where="s.yaml")
        with pytest.raises(StudyError) as study:
            Study.from_mapping(study_data(**{key: value}))
        assert str(study.value) == message


def test_the_python_api_checks_a_setting_as_the_file_does(tmp_path):
    from lmcompose.compose import load_edits

    with pytest.raises(ConfigError, match=r"^load_edits\(\): seed: 1099511627776 is above 4294967295"):
        load_edits("counterfact", seed=2**40)
    with pytest.raises(ConfigError, match=r"^load_edits\(\): skip_invalid: expected true or false"):
        load_edits("counterfact", skip_invalid="yes")
    # the noise floor's threads and seeds are the run's own fields
    with pytest.raises(StudyError, match=r"^noise_floor\.threads: 0 is below 1; give a whole number of threads"):
        Study.from_mapping(study_data(noise_floor={"cells": ["magnitude"], "threads": 0}))
    assert check_field(SweepSettings, "replicates", 3, "replicates") == 3


@dataclass
class _StepConfig:
    """A plugin's step config may declare its fields' checks the way settings do."""

    rank: int = setting(4, minimum=1, maximum=64, unit="directions", example="8")
    mode: str = setting("fast", choices=("fast", "exact"))


def test_a_step_config_gets_the_settings_checks_and_messages():
    assert build_config(_StepConfig, {"rank": "8", "mode": "exact"}, "step lowrank") == _StepConfig(8, "exact")
    with pytest.raises(ConfigError) as big:
        build_config(_StepConfig, {"rank": "100"}, "step lowrank")
    assert str(big.value) == (
        "step lowrank: field 'rank': 100 is above 64; give a whole number of directions from 1 to 64, e.g. 8"
    )
    with pytest.raises(ConfigError, match=r"^step lowrank: field 'rank': 'x' is not an integer$"):
        build_config(_StepConfig, {"rank": "x"}, "step lowrank")
    with pytest.raises(ConfigError, match=r"field 'mode': the string 'slow' is not one of fast, exact$"):
        build_config(_StepConfig, {"mode": "slow"}, "step lowrank")


def test_a_field_without_a_check_for_its_annotation_is_a_programming_error():
    @dataclass
    class Odd:
        when: complex = setting(0j)

    with pytest.raises(TypeError, match="no check for annotation"):
        check_field(Odd, "when", 1j, "when")


def test_help_lists_each_setting_under_its_concern():
    from lmcompose_cli.main import app
    from typer.testing import CliRunner

    env = {"TERMINAL_WIDTH": "100", "_TYPER_FORCE_DISABLE_TERMINAL": "1", "NO_COLOR": "1", "COLUMNS": "100"}
    text = CliRunner(env=env).invoke(app, ["sweep", "--help"], prog_name="lmcompose").output
    panels = [line.split("─ ", 1)[1].split(" ─", 1)[0] for line in text.splitlines() if line.startswith("╭─ ")]
    assert sorted(panels) == sorted(["Arguments", "Options", "Model", "Data", "Grid", "Evaluation", "Output"])
    section = {p: text.split(f"╭─ {p} ", 1)[1].split("╰", 1)[0] for p in panels}
    assert "--seed" in section["Data"] and "--threads" in section["Model"] and "--vary" in section["Grid"]
    assert "--topk" in section["Evaluation"] and "--save-cells" in section["Output"]
