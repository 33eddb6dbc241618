"""Options that several commands share, each declared once, and the one helper that turns a
command's flags into its settings (:func:`settings_from_flags`).

``run`` and ``sweep`` take the same fifteen options in two groups, :class:`RunFlags` (how the
steps run and are measured) and :class:`ModelFlags` (how the model is loaded and computes).
A command takes a group as one parameter; :func:`with_flag_groups` spreads the group's
fields into the command's options at that parameter's place, so ``--help`` lists them where
the parameter stands, and hands the command the group filled in.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Protocol, TypeVar

import typer
from lmcompose.errors import UsageError
from lmcompose.settings import concern_of

from lmcompose_cli.app import data_dir_of

ModelArg = Annotated[
    str | None,
    typer.Argument(
        help="Named model (smollm2-135m, gemma3-270m), model folder, .gguf file, or hub id.", show_default=False
    ),
]
PlotsOption = Annotated[bool, typer.Option("--plots/--no-plots", help="Write plots/*.png with report.md.")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Print the pip command without running it.")]
# how a sweep or a study runs its plan (lmcompose.engine.driver): here, or as Ray tasks
ExecutorOption = Annotated[
    str, typer.Option("--executor", help="local (this process) or ray (tasks on a Ray cluster).")
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Ray cluster address (host:port, ray://host:10001 or auto); default: start a local cluster.",
    ),
]
GpusPerTaskOption = Annotated[
    float | None,
    typer.Option("--gpus-per-task", help="GPUs each Ray task asks for; fractions (0.25) share one GPU between tasks."),
]
PluginNameArg = Annotated[
    str | None, typer.Argument(help="Short name of a plugin in registry.yaml.", show_default=False)
]


@dataclass
class FlagGroup:
    """A dataclass of options several commands share (each field ``Annotated`` with its
    ``typer.Option`` and defaulting to "not given"); see :func:`with_flag_groups`."""

    def given(self) -> dict[str, object]:
        """The settings these flags override, by settings field (None: not given)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass
class RunFlags(FlagGroup):
    """How the steps run and are measured."""

    seed: Annotated[int | None, typer.Option("--seed", help="Seed for edit selection and calibration.")] = None
    policy: Annotated[
        str | None,
        typer.Option("--keep-compressed", "--policy", help="none | project | recompress (default project)."),
    ] = None
    protocol: Annotated[
        str | None,
        typer.Option(
            "--protocol",
            help="default | paper: the paper's choices in one place (docs/replication.md); step fields you write win.",
        ),
    ] = None
    metrics: Annotated[str | None, typer.Option("--metrics", help="Comma-separated metric names (default: all).")] = (
        None
    )
    ppl_tokens: Annotated[
        str | None, typer.Option("--ppl-tokens", help="Perplexity token budget, or 'all' for the whole test split.")
    ] = None
    ppl_seqlen: Annotated[int | None, typer.Option("--ppl-seqlen", help="Perplexity window length.")] = None
    ppl_corpus: Annotated[
        str | None,
        typer.Option(
            "--ppl-corpus",
            help="Perplexity text: wikitext2 (default), a text file, hub:ID[?config=..&split=..&field=..] or sample.",
        ),
    ] = None
    calibration_corpus: Annotated[
        str | None,
        typer.Option(
            "--calibration-corpus",
            help="Calibration text (compressors, MEMIT statistics): wikitext2 (default), a text file, hub:ID[?...] "
            "or sample.",
        ),
    ] = None

    def given(self) -> dict[str, object]:
        """--metrics as a list; --ppl-tokens and --ppl-seqlen are metric options
        (:meth:`metric_options`), not settings."""
        out = super().given()
        out["metrics"] = metric_names(self.metrics)
        del out["ppl_tokens"], out["ppl_seqlen"]
        return out

    def metric_options(self) -> dict[str, dict[str, object]]:
        """--ppl-tokens and --ppl-seqlen as the perplexity metric's options ({} when neither)."""
        opts: dict[str, object] = {}
        if self.ppl_tokens is not None:
            if self.ppl_tokens == "all":
                opts["max_tokens"] = 0
            else:
                try:
                    max_tokens = int(self.ppl_tokens)
                except ValueError:
                    raise UsageError(f"--ppl-tokens {self.ppl_tokens!r}: give a number of tokens or 'all'") from None
                opts["max_tokens"] = max_tokens
                if max_tokens < 1:
                    raise UsageError(
                        f"--ppl-tokens {self.ppl_tokens}: give a positive number of tokens, or 'all' for the whole "
                        "test split"
                    )
        if self.ppl_seqlen is not None:
            opts["seqlen"] = self.ppl_seqlen
        return {"perplexity": opts} if opts else {}


@dataclass
class ModelFlags(FlagGroup):
    """How the model is loaded and computes."""

    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ...")] = None
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            help="float32 | bfloat16 | float16 | auto (the checkpoint's own; default on a GPU; float32 on a CPU "
            "without native bf16).",
        ),
    ] = None
    device_map: Annotated[
        str | None,
        typer.Option(
            "--device-map",
            help="Place layers with accelerate: auto | balanced | sequential | cpu | cuda:N (from_pretrained's "
            "device_map).",
        ),
    ] = None
    max_memory: Annotated[
        str | None, typer.Option("--max-memory", help="Memory per device for --device-map, e.g. 0=20GiB,cpu=60GiB.")
    ] = None
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision", help="A hub model's branch, tag or commit (the resolved commit is recorded in config.yaml)."
        ),
    ] = None
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="torch threads (default: torch's own count; 1 with --deterministic). Recorded in config.yaml; a "
            "resume must use the same.",
        ),
    ] = None
    deterministic: Annotated[
        bool,
        typer.Option(
            "--deterministic",
            help="torch.use_deterministic_algorithms(True) and 1 thread unless --threads: the same command gives "
            "bit-identical rows. Recorded in config.yaml.",
        ),
    ] = False


F = TypeVar("F", bound=Callable[..., object])


def with_flag_groups(command: F) -> F:
    """``command`` with each parameter annotated with a :class:`FlagGroup` replaced, in place,
    by the group's fields as options; the command is called with the group filled in."""
    signature = inspect.signature(command, eval_str=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, type[FlagGroup]] = {}
    for param in signature.parameters.values():
        group = param.annotation
        if not (isinstance(group, type) and issubclass(group, FlagGroup)):
            params.append(param)
            continue
        groups[param.name] = group
        hints = typing.get_type_hints(group, include_extras=True)
        for f in dataclasses.fields(group):
            params.append(inspect.Parameter(f.name, param.kind, default=f.default, annotation=hints[f.name]))
    for param in params:  # options that set a setting are listed under its concern
        _help_panel(param)
    names = [p.name for p in params]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise TypeError(f"{command.__name__}: option(s) {duplicated} are both its own and a flag group's")

    @functools.wraps(command)
    def with_groups(**kwargs: object) -> object:
        for name, group in groups.items():
            kwargs[name] = group(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(group)})
        return command(**kwargs)

    # typer reads the options from the signature (inspect honours __signature__); functions do not declare it
    with_groups.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    with_groups.__annotations__ = {p.name: p.annotation for p in params}
    return with_groups  # type: ignore[return-value]  # called as `command` is, the groups filled in


#: flags that set a metric's options rather than a setting of their own
METRIC_OPTION_FLAGS = {"ppl_tokens": "evaluation", "ppl_seqlen": "evaluation"}


def _help_panel(param: inspect.Parameter) -> None:
    """``--help`` lists an option that sets a setting under its concern (lmcompose.settings:
    Model, Data, Grid, Evaluation, Output), unless the option names its own panel; options
    keep the order the command declares them in."""
    concern = concern_of(param.name) or METRIC_OPTION_FLAGS.get(param.name)
    if concern is None:
        return
    for info in typing.get_args(param.annotation)[1:]:
        if isinstance(info, typer.models.OptionInfo) and info.rich_help_panel is None:
            info.rich_help_panel = concern.capitalize()


def metric_names(text: str | None) -> list[str] | None:
    """``--metrics a,b`` as a list; left out means every metric, and an empty value is a mistake."""
    if text is None:
        return None
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UsageError(
            f"--metrics {text!r} names no metric; give names such as edit,perplexity, or leave the flag out for "
            f"every metric"
        )
    return names


class Settings(Protocol):
    """What :func:`settings_from_flags` needs of a settings class (RunSettings, SweepSettings)."""

    metric_options: dict[str, dict[str, object]]

    @classmethod
    def from_file(cls, path: str | Path) -> Settings: ...

    def __init__(self) -> None: ...

    def merged(self, **overrides: object) -> Settings: ...

    def validate(self) -> object: ...


S = TypeVar("S", bound=Settings)


def settings_from_flags(
    settings_cls: type[S],
    ctx: typer.Context,
    config: Path | None,
    run_flags: RunFlags,
    model_flags: ModelFlags,
    **own: object,
) -> S:
    """A command's settings, validated: the ``--config`` file's (else the defaults) with every
    flag given over it (the shared groups' and the command's ``own``, by settings field).
    A flag left out (None) keeps the file's value, and so does a switch left off (False):
    switches only turn things on. --data-dir comes from the invocation; --ppl-tokens and
    --ppl-seqlen are merged over the file's perplexity options."""
    overrides = {**own, **run_flags.given(), **model_flags.given(), "data_dir": _as_str(data_dir_of(ctx))}
    base = settings_cls.from_file(config) if config is not None else settings_cls()
    settings = base.merged(**{k: None if v is False else v for k, v in overrides.items()})
    extra = run_flags.metric_options()
    if extra:
        merged = dict(settings.metric_options)
        for k, v in extra.items():
            merged[k] = {**merged.get(k, {}), **v}
        settings.metric_options = merged
    settings.validate()
    return typing.cast(S, settings)  # merged() keeps the class: dataclasses.replace


def _as_str(path: Path | None) -> str | None:
    return str(path) if path is not None else None
