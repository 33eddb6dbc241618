"""The CLI package: options that run and sweep share are declared once (flag groups spread
into each command in place), one helper turns flags into settings, and no module is long."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest
import typer
from lmcompose.compose import RunSettings
from lmcompose.errors import UsageError
from lmcompose_cli.commands.runs import run, sweep
from lmcompose_cli.main import app
from lmcompose_cli.options import FlagGroup, ModelFlags, RunFlags, settings_from_flags, with_flag_groups
from typer.testing import CliRunner

CLI = Path(__file__).resolve().parents[1] / "cli" / "src" / "lmcompose_cli"


@dataclass
class Pair(FlagGroup):
    first: Annotated[int | None, typer.Option("--first", help="The first.")] = None
    loud: Annotated[bool, typer.Option("--loud", help="Say it loud.")] = False


def test_a_flag_group_becomes_options_in_place_and_reaches_the_command_filled_in():
    got = []
    mini = typer.Typer()

    @mini.command()
    @with_flag_groups
    def hello(before: Annotated[str, typer.Option("--before")] = "b", pair: Pair = Pair(), after: int = 0) -> None:
        got.append((before, pair, after))

    @mini.command()
    def other() -> None:  # two commands, so `hello` is a subcommand
        pass

    res = CliRunner().invoke(mini, ["hello", "--first", "3", "--loud", "--after", "2"])
    assert res.exit_code == 0, res.output
    assert got == [("b", Pair(first=3, loud=True), 2)]
    params = [p.name for p in typer.main.get_command(mini).commands["hello"].params]
    assert params == ["before", "first", "loud", "after"]


def test_a_command_option_named_like_a_group_field_is_refused():
    def clash(first: int = 0, pair: Pair = Pair()) -> None:
        pass

    with pytest.raises(TypeError, match="first"):
        with_flag_groups(clash)


def test_run_and_sweep_take_every_shared_option_from_the_groups():
    commands = typer.main.get_command(app).commands
    for group in (RunFlags, ModelFlags):
        names = [f.name for f in dataclasses.fields(group)]
        helps = []
        for name in ("run", "sweep"):
            params = [p.name for p in commands[name].params]
            at = params.index(names[0])
            assert params[at : at + len(names)] == names, name  # together, in the group's order
            helps.append({p.name: p.help for p in commands[name].params if p.name in names})
        assert helps[0] == helps[1]
    for command in (run, sweep):  # the commands themselves declare the groups, not the options
        assert "seed" not in command.__wrapped__.__code__.co_varnames


def test_settings_from_flags_puts_given_flags_over_the_file_and_keeps_the_rest(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "model: smollm2-135m\nsteps: [magnitude]\nseed: 7\nskip_invalid: true\n"
        "metric_options: {perplexity: {seqlen: 64}}\n"
    )
    ctx = typer.Context(typer.main.get_command(app))
    settings = settings_from_flags(
        RunSettings,
        ctx,
        cfg,
        RunFlags(metrics="perplexity", ppl_tokens="all"),
        ModelFlags(device="cpu"),
        steps=["rtn:bits=4"],
        skip_invalid=False,  # a switch left off keeps the file's value
        out=None,
    )
    assert (settings.model, settings.steps, settings.seed, settings.skip_invalid) == (
        "smollm2-135m",
        ["rtn:bits=4"],
        7,
        True,
    )
    assert settings.metrics == ["perplexity"] and settings.device == "cpu"
    assert settings.metric_options["perplexity"] == {"seqlen": 64, "max_tokens": 0}
    with pytest.raises(UsageError, match="--ppl-tokens"):
        settings_from_flags(RunSettings, ctx, cfg, RunFlags(ppl_tokens="0"), ModelFlags())


def test_no_cli_module_is_over_400_lines():
    long = {
        p.name: n for p in CLI.rglob("*.py") if "templates" not in p.parts for n in [len(p.read_text().splitlines())]
    }
    assert {k: v for k, v in long.items() if v > 400} == {}
