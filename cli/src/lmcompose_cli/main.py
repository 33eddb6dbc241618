"""``lmcompose``: discover plugins, list what they provide, run sequences of interventions.

Startup stays cheap: nothing here imports torch until a command that needs a model runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from lmcompose import plugins as plugin_api
from lmcompose.api import Progress, config_fields, field_help
from lmcompose.errors import DuplicateNameError, LMComposeError, PluginLoadError, UsageError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

console = Console()
err_console = Console(stderr=True)

DEBUG_ENV = "LMCOMPOSE_DEBUG"
DATA_DIR_KEY = "lmcompose.data_dir"

# Options `run` and `sweep` share, declared once.
ModelArg = Annotated[
    str | None,
    typer.Argument(
        help="Named model (smollm2-135m, gemma3-270m), model folder, .gguf file, or hub id.", show_default=False
    ),
]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Seed for edit selection and calibration.")]
PolicyOption = Annotated[
    str | None, typer.Option("--keep-compressed", "--policy", help="none | project | recompress (default project).")
]
ProtocolOption = Annotated[
    str | None,
    typer.Option(
        "--protocol",
        help="default | paper: the paper's choices in one place (docs/replication.md); step fields you write win.",
    ),
]
MetricsOption = Annotated[str | None, typer.Option("--metrics", help="Comma-separated metric names (default: all).")]
PplTokensOption = Annotated[
    str | None, typer.Option("--ppl-tokens", help="Perplexity token budget, or 'all' for the whole test split.")
]
PplSeqlenOption = Annotated[int | None, typer.Option("--ppl-seqlen", help="Perplexity window length.")]
PplCorpusOption = Annotated[
    str | None,
    typer.Option(
        "--ppl-corpus",
        help="Perplexity text: wikitext2 (default), a text file, hub:ID[?config=..&split=..&field=..] or sample.",
    ),
]
CalibrationCorpusOption = Annotated[
    str | None,
    typer.Option(
        "--calibration-corpus",
        help="Calibration text (compressors, MEMIT statistics): wikitext2 (default), a text file, hub:ID[?...] "
        "or sample.",
    ),
]
DeviceOption = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ...")]
DtypeOption = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        help="float32 | bfloat16 | float16 | auto (the checkpoint's own; default on a GPU; float32 on a CPU "
        "without native bf16).",
    ),
]
DeviceMapOption = Annotated[
    str | None,
    typer.Option(
        "--device-map",
        help="Place layers with accelerate: auto | balanced | sequential | cpu | cuda:N (from_pretrained's "
        "device_map).",
    ),
]
MaxMemoryOption = Annotated[
    str | None, typer.Option("--max-memory", help="Memory per device for --device-map, e.g. 0=20GiB,cpu=60GiB.")
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="torch threads (default: torch's own count; 1 with --deterministic). Recorded in config.yaml; a "
        "resume must use the same.",
    ),
]
DeterministicOption = Annotated[
    bool,
    typer.Option(
        "--deterministic",
        help="torch.use_deterministic_algorithms(True) and 1 thread unless --threads: the same command gives "
        "bit-identical rows. Recorded in config.yaml.",
    ),
]
RevisionOption = Annotated[
    str | None,
    typer.Option(
        "--revision", help="A hub model's branch, tag or commit (the resolved commit is recorded in config.yaml)."
    ),
]


def describe_failure(exc: BaseException) -> tuple[str, str, int]:
    """(label, message, exit code) for an exception that ends a command: 2 for a user's
    mistake (UsageError) or a plugin that cannot be loaded, 1 for a step or computation that
    failed, 130 for an interrupt."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "stopped; rows already written are kept: rerun the same command to resume", 130
    if isinstance(exc, UsageError):
        return "error", str(exc), 2
    if isinstance(exc, DuplicateNameError | PluginLoadError):
        return "plugin error", str(exc), 2
    if isinstance(exc, LMComposeError):
        return "error", str(exc), 1
    if isinstance(exc, MemoryError):
        return "error", "out of memory; try a smaller model, budget or batch, or --snapshots disk", 1
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return "error", f"{exc.strerror or exc}{where}", 1
    return (
        "internal error",
        (
            f"{type(exc).__name__}: {exc}. This is a bug in lmcompose or a plugin: rerun with "
            "--debug for the traceback, and report it"
        ),
        1,
    )


class CommandGroup(TyperGroup):
    """The one top-level handler: every command's failure becomes one message and an exit
    code (describe_failure); ``--debug`` (or LMCOMPOSE_DEBUG=1) prints the traceback too."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            # a command's own exit, and typer's parse errors (a missing argument, an unknown
            # option or command, a bad value: typer >= 0.27.2 raises its vendored click's
            # exceptions, all TyperException): typer prints the usage and the error, exit 2
            raise
        except BaseException as exc:  # noqa: BLE001 - this is the handler of last resort
            if isinstance(exc, SystemExit):
                raise
            label, message, code = describe_failure(exc)
            if ctx.meta.get(DEBUG_ENV) or os.environ.get(DEBUG_ENV, "").lower() in {"1", "true", "yes"}:
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
            err_console.print(f"[bold red]{label}:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None


app = typer.Typer(
    name="lmcompose",
    cls=CommandGroup,
    help="Compose test-time interventions (editing, pruning, quantization) on causal LMs and measure how they "
    "interact.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode="rich",
)
list_app = typer.Typer(
    help="List what the installed plugins provide, with each config field and its help.", no_args_is_help=True
)
app.add_typer(list_app, name="list")


@app.callback()
def main_options(
    ctx: typer.Context,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail when any plugin fails to load (default: report and go on).")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an error, not only its message.")
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Folder laid out like shared/data (wikitext-2-raw/, counterfact/, ...) for this command (over "
            "LMCOMPOSE_DATA_DIR).",
        ),
    ] = None,
) -> None:
    if data_dir is not None:
        if not data_dir.is_dir():
            err_console.print(f"[bold red]error:[/] --data-dir {data_dir} is not a folder")
            raise typer.Exit(2)
        ctx.meta[DATA_DIR_KEY] = data_dir.resolve()  # reaches the run through its settings and context
    if strict:
        os.environ["LMCOMPOSE_STRICT_PLUGINS"] = "1"
    ctx.meta[DEBUG_ENV] = debug  # this invocation only (an environment variable would outlive it)


# --------------------------------------------------------------------------------------
# plugins / list
# --------------------------------------------------------------------------------------


@app.command(
    epilog="Examples: lmcompose plugins; lmcompose plugins --json; lmcompose plugins --available; "
    "LMCOMPOSE_BLOCK_PLUGINS=x lmcompose plugins"
)
def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    available: Annotated[
        bool, typer.Option("--available", help="List the plugins in registry.yaml, installed or not.")
    ] = False,
) -> None:
    """List loaded plugins, what each registers, and plugins that failed to load."""
    if available:
        _plugins_available(as_json)
        return
    infos = plugin_api.plugin_infos()
    provided: dict[str, list[str]] = {}
    for kind, registry in (
        ("interventions", plugin_api.get_interventions()),
        ("metrics", plugin_api.get_metrics()),
        ("datasets", plugin_api.get_datasets()),
        ("architectures", plugin_api.get_architectures()),
    ):
        for entry in registry.entries():
            provided.setdefault(entry.distribution, []).append(f"{kind[:-1]}:{entry.name}")
    if as_json:
        out = []
        for info in infos:
            d = info.as_dict()
            d["provides"] = sorted(provided.get(info.distribution, [])) if info.error is None else []
            out.append(d)
        typer.echo(json.dumps(out, indent=2))
        return
    table = Table(title="lmcompose plugins")
    for col in ("name", "distribution", "version"):
        table.add_column(col, no_wrap=True)
    table.add_column("hooks", overflow="fold")
    table.add_column("status", overflow="fold")
    for info in infos:
        status = "[red]failed: " + info.error + "[/]" if info.error else "[green]loaded[/]"
        table.add_row(
            info.name,
            info.distribution,
            info.version,
            ", ".join(h.removeprefix("register_") for h in info.hooks),
            status,
        )
    console.print(table)
    for dist, things in sorted(provided.items()):
        console.print(f"[bold]{dist}[/] provides: {', '.join(sorted(things))}", highlight=False, soft_wrap=True)


def _plugins_available(as_json: bool) -> None:
    from lmcompose_cli.registry_file import read_registry

    entries = read_registry()
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "name": e.name,
                        "kind": e.kind,
                        "distribution": e.distribution,
                        "summary": e.summary,
                        "installed": e.installed_version,
                        "local_path": str(e.path) if e.path else None,
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return
    table = Table(title="plugins in registry.yaml")
    for col in ("name", "kind", "distribution"):
        table.add_column(col, no_wrap=True)
    table.add_column("installed", no_wrap=True)
    table.add_column("summary", overflow="fold")
    for e in entries:
        status = f"[green]{e.installed_version}[/]" if e.installed_version else "not installed"
        table.add_row(e.name, e.kind, e.distribution, status, e.summary)
    console.print(table)


def _run_pip(cmd: list[str], dry_run: bool) -> None:
    import shlex
    import subprocess

    console.print("will run: " + " ".join(shlex.quote(c) for c in cmd), highlight=False, soft_wrap=True)
    if dry_run:
        return
    code = subprocess.call(cmd)
    if code != 0:
        err_console.print(f"[bold red]error:[/] pip exited with code {code}")
        raise typer.Exit(code)


@app.command(
    epilog="Examples: lmcompose install counterfact; lmcompose install --package lmcompose-noise==0.1.0; lmcompose "
    "install zsre --dry-run"
)
def install(
    name: Annotated[
        str | None, typer.Argument(help="Short name of a plugin in registry.yaml.", show_default=False)
    ] = None,
    package: Annotated[
        str | None,
        typer.Option("--package", help="Install this pip requirement instead (a plugin not in the registry)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the pip command without running it.")] = False,
) -> None:
    """pip-install a plugin listed in registry.yaml (first-party plugins from this checkout's plugins/ folder)."""
    from lmcompose_cli.registry_file import install_command

    cmd = install_command(name, package)
    _run_pip(cmd, dry_run)


@app.command(epilog="Examples: lmcompose uninstall counterfact; lmcompose uninstall --package lmcompose-noise")
def uninstall(
    name: Annotated[
        str | None, typer.Argument(help="Short name of a plugin in registry.yaml.", show_default=False)
    ] = None,
    package: Annotated[str | None, typer.Option("--package", help="Uninstall this distribution instead.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the pip command without running it.")] = False,
) -> None:
    """pip-uninstall a plugin listed in registry.yaml."""
    from lmcompose_cli.registry_file import uninstall_command

    cmd = uninstall_command(name, package)
    _run_pip(cmd, dry_run)


@app.command(
    "new-plugin",
    epilog="Examples: lmcompose new-plugin noise --kind intervention; lmcompose new-plugin wordcount --kind metric "
    "--dir ~/src",
)
def new_plugin(
    name: Annotated[
        str,
        typer.Argument(
            help="Plugin name: lowercase, e.g. noise (distribution lmcompose-noise, module lmcompose_noise)."
        ),
    ],
    kind: Annotated[str, typer.Option("--kind", help="intervention | metric | dataset")] = "intervention",
    directory: Annotated[Path, typer.Option("--dir", help="Folder to create the package in.")] = Path("."),
) -> None:
    """Create a plugin package from the template: pyproject with the entry point, one working example, its tests, a README."""  # noqa: E501 (the command's one-line help)
    from lmcompose_cli.scaffold import render

    target = render(name, kind, directory)
    console.print(f"created {target}", highlight=False)
    console.print(
        f"next: pip install -e {target}  then  lmcompose plugins  and  pytest {target / 'tests'}",
        highlight=False,
        soft_wrap=True,
    )


def _list_registry(kind: str) -> None:
    registry = {
        "interventions": plugin_api.get_interventions,
        "metrics": plugin_api.get_metrics,
        "datasets": plugin_api.get_datasets,
        "architectures": plugin_api.get_architectures,
    }[kind]()
    table = Table(title=kind)
    table.add_column("name", style="bold")
    table.add_column("from")
    table.add_column("what", overflow="fold")
    table.add_column("fields", overflow="fold")
    for entry in registry.entries():
        obj = entry.load()
        detail = []
        if kind == "interventions":
            knob = obj.strength
            detail.append(
                f"kind: {obj.kind}; strength: {knob.field} in {knob.describe()}" if knob else f"kind: {obj.kind}"
            )
        if kind == "architectures":
            detail.append(f"layers: {obj.layers}; mlp out: {obj.mlp_out}")
        config_cls = getattr(obj, "Config", None)
        if config_cls is not None and kind in ("interventions", "metrics"):
            for name, f in config_fields(config_cls).items():
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
                detail.append(f"{name}={default!r}: {field_help(f)}")
        if kind == "metrics":
            detail.insert(0, "keys: " + ", ".join(obj.keys))
        if kind == "datasets":
            detail.append(f"kind: {entry.extra.get('kind', getattr(obj, 'kind', 'edits'))}")
        table.add_row(entry.name, entry.distribution, entry.summary, "\n".join(detail))
    console.print(table)


@list_app.command("interventions")
def list_interventions() -> None:
    """Interventions: kind, strength knob, config fields."""
    _list_registry("interventions")


@list_app.command("metrics")
def list_metrics() -> None:
    """Metrics: result keys and config fields."""
    _list_registry("metrics")


@list_app.command("datasets")
def list_datasets() -> None:
    """Edit datasets and text corpora."""
    _list_registry("datasets")


@list_app.command("architectures")
def list_architectures() -> None:
    """Architecture specs (model types each one covers)."""
    _list_registry("architectures")


# --------------------------------------------------------------------------------------
# run / validate / models
# --------------------------------------------------------------------------------------


class RichProgress(Progress):
    """rich progress bars for long work."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RP

        self.rp = RP(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )

    @contextmanager
    def task(self, description: str, total: int | None = None):
        task_id = self.rp.add_task(description, total=total)
        try:
            yield lambda n=1: self.rp.advance(task_id, n)
        finally:
            self.rp.remove_task(task_id)

    def note(self, message: str) -> None:
        err_console.print(f"[yellow]note:[/] {message}", highlight=False, soft_wrap=True)


def _data_dir(ctx: typer.Context) -> Path | None:
    """This invocation's --data-dir (None: the settings' data_dir, else LMCOMPOSE_DATA_DIR)."""
    return ctx.meta.get(DATA_DIR_KEY)


def _settings(ctx: typer.Context, config: Path | None, **flags: Any):
    from lmcompose.compose import RunSettings

    base = RunSettings.from_file(config) if config is not None else RunSettings()
    return base.merged(data_dir=_as_str(_data_dir(ctx)), **flags)


def _as_str(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _apply_metric_flags(settings: Any, ppl_tokens: str | None, ppl_seqlen: int | None) -> None:
    """Merge --ppl-tokens / --ppl-seqlen over the settings' metric options."""
    extra = _metric_flag_options(ppl_tokens, ppl_seqlen)
    if extra:
        merged = dict(settings.metric_options)
        for k, v in extra.items():
            merged[k] = {**merged.get(k, {}), **v}
        settings.metric_options = merged


def _metric_flag_options(ppl_tokens: str | None, ppl_seqlen: int | None) -> dict[str, dict[str, Any]] | None:
    opts: dict[str, Any] = {}
    if ppl_tokens is not None:
        if ppl_tokens == "all":
            opts["max_tokens"] = 0
        else:
            try:
                opts["max_tokens"] = int(ppl_tokens)
            except ValueError:
                raise UsageError(f"--ppl-tokens {ppl_tokens!r}: give a number of tokens or 'all'") from None
            if opts["max_tokens"] < 1:
                raise UsageError(
                    f"--ppl-tokens {ppl_tokens}: give a positive number of tokens, or 'all' for the whole test split"
                )
    if ppl_seqlen is not None:
        opts["seqlen"] = ppl_seqlen
    return {"perplexity": opts} if opts else None


def _metric_names(text: str | None) -> list[str] | None:
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


RESULT_COLUMNS = ("perplexity", "avg_bits", "sparsity", "edit_success", "generalization", "locality", "flops")


def print_rows(rows: list[dict[str, Any]]) -> None:
    table = Table(title="results")
    table.add_column("pos", justify="right")
    table.add_column("step")
    table.add_column("strength", justify="right")
    present = [c for c in RESULT_COLUMNS if any(r.get(c) is not None for r in rows)]
    for c in present:
        table.add_column(c, justify="right")
    table.add_column("step s", justify="right")
    for r in rows:
        step = r["step"]["name"] + (" (again)" if r["step"].get("recompress") else "") if r.get("step") else "base"
        cells = [str(r["position"]), step, "" if r.get("strength") is None else str(r["strength"])]
        for c in present:
            v = r.get(c)
            cells.append("" if v is None else (f"{v:.3g}" if c == "flops" else f"{v:.4g}"))
        cells.append(f"{r.get('elapsed_s', 0):.1f}")
        table.add_row(*cells)
    console.print(table)


@app.command(
    epilog="Examples: lmcompose run smollm2-135m magnitude:sparsity=0.5 rtn:bits=4 --out runs/x; "
    "lmcompose run gemma3-270m magnitude:structure=2:4 --ppl-tokens all; lmcompose run -c experiment.yaml"
)
def run(
    ctx: typer.Context,
    model: ModelArg = None,
    steps: Annotated[
        list[str] | None,
        typer.Argument(
            help="Steps in order: name[:field=value,...] (e.g. magnitude:sparsity=0.5 rtn:bits=4).", show_default=False
        ),
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Run folder for config.yaml and results.jsonl.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML with run settings; flags override it.")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="Edit dataset name (see `lmcompose list datasets`).")
    ] = None,
    dataset_source: Annotated[
        str | None,
        typer.Option(
            "--dataset-source",
            help="Dataset file, URL, hub:ID[?config=..&split=..] (Hugging Face datasets) or sample (default: the "
            "data folder, the download cache, the canonical URL, then the bundled sample).",
        ),
    ] = None,
    edits: Annotated[
        int | None, typer.Option("--edits", "-n", help="Number of dataset records to edit (a seeded random selection).")
    ] = None,
    skip_invalid: Annotated[
        bool,
        typer.Option("--skip-invalid", help="Skip malformed dataset records (and count them) instead of stopping."),
    ] = False,
    seed: SeedOption = None,
    policy: PolicyOption = None,
    protocol: ProtocolOption = None,
    metrics: MetricsOption = None,
    ppl_tokens: PplTokensOption = None,
    ppl_seqlen: PplSeqlenOption = None,
    ppl_corpus: PplCorpusOption = None,
    calibration_corpus: CalibrationCorpusOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    device_map: DeviceMapOption = None,
    max_memory: MaxMemoryOption = None,
    revision: RevisionOption = None,
    threads: ThreadsOption = None,
    deterministic: DeterministicOption = False,
    save_model: Annotated[
        str | None,
        typer.Option(
            "--save-model",
            help="Save the final model to this folder (Hugging Face format: plain from_pretrained loads it; plus "
            "lmcompose's compression sidecar).",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --save-model folder.")] = False,
) -> None:
    """Apply STEPs to MODEL in order; evaluate every metric on the base model and after each step."""
    settings = _settings(
        ctx,
        config,
        model=model,
        steps=list(steps) if steps else None,
        out=out,
        dataset=dataset,
        dataset_source=dataset_source,
        edits=edits,
        seed=seed,
        policy=policy,
        protocol=protocol,
        skip_invalid=True if skip_invalid else None,
        metrics=_metric_names(metrics),
        device=device,
        dtype=dtype,
        save_model=save_model,
        overwrite=True if overwrite else None,
        device_map=device_map,
        max_memory=max_memory,
        revision=revision,
        ppl_corpus=ppl_corpus,
        calibration_corpus=calibration_corpus,
        threads=threads,
        deterministic=True if deterministic else None,
    )
    _apply_metric_flags(settings, ppl_tokens, ppl_seqlen)
    settings.validate()
    from lmcompose.compose import run as run_sequence

    _quiet_transformers()
    progress = RichProgress()
    with progress.rp:
        rows, _ctx = run_sequence(settings, progress)
    if rows:
        print_rows(rows)
    else:
        console.print("every evaluation of this run is already in its results.jsonl; nothing to do")
    if settings.out:
        console.print(f"results: {Path(settings.out) / 'results.jsonl'}")
    if settings.save_model:
        console.print(
            f"model: {settings.save_model} (AutoModelForCausalLM.from_pretrained loads it)",
            highlight=False,
            soft_wrap=True,
        )


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:  # save_pretrained's "Writing model shards" bar
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        pass


# --------------------------------------------------------------------------------------
# sweep / report
# --------------------------------------------------------------------------------------


def print_report(report: Any, tables: int | None = None) -> None:
    """The report's tables (the same strings as in report.md) as rich tables (the first
    ``tables`` of them when given: a study's Table 1)."""
    from rich.markup import escape

    for t in report.tables[:tables]:
        # escaped: a caption's "[lo, hi]" is text, not rich markup
        table = Table(title=escape(t.title), caption=escape(t.caption), caption_justify="left")
        for i, col in enumerate(t.columns):
            table.add_column(escape(col), justify="left" if i == 0 else "right", overflow="fold")
        for row in t.rows:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
    for note in report.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)


@app.command(
    epilog="Examples: lmcompose sweep smollm2-135m memit wanda --vary wanda.sparsity=0.25,0.5,0.75 --edits 5; "
    "lmcompose sweep smollm2-135m magnitude rtn:group_size=64 --vary rtn.bits=8,4,3 --orders "
    "'magnitude,rtn;rtn,magnitude'; "
    "lmcompose sweep -c sweep.yaml"
)
def sweep(
    ctx: typer.Context,
    model: ModelArg = None,
    steps: Annotated[
        list[str] | None,
        typer.Argument(help="The steps to compose: name[:field=value,...] (e.g. memit wanda).", show_default=False),
    ] = None,
    vary: Annotated[
        str | None,
        typer.Option("--vary", help="The field to sweep: STEP.FIELD=v1,v2,... (e.g. wanda.sparsity=0.25,0.5,0.75)."),
    ] = None,
    orders: Annotated[
        str | None,
        typer.Option(
            "--orders", help="all (every permutation, default) or orders of step names, e.g. 'memit,wanda;wanda,memit'."
        ),
    ] = None,
    replicates: Annotated[
        int | None,
        typer.Option(
            "--replicates", "-k", help="Replicates: disjoint seeded batches of --edits edits each (default 1)."
        ),
    ] = None,
    edits: Annotated[
        int | None, typer.Option("--edits", "-n", help="Edits per replicate (a seeded random selection).")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", "-d", help="Edit dataset name (default: the bundled sample when a step edits)."),
    ] = None,
    dataset_source: Annotated[
        str | None, typer.Option("--dataset-source", help="Dataset file, URL, hub:ID[?config=..&split=..] or sample.")
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Skip malformed dataset records instead of stopping.")
    ] = False,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="Run folder (default runs/sweep-<id>); rerun the same command to resume."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML with sweep settings; flags override it.")
    ] = None,
    seed: SeedOption = None,
    policy: PolicyOption = None,
    protocol: ProtocolOption = None,
    metrics: MetricsOption = None,
    ppl_tokens: PplTokensOption = None,
    ppl_seqlen: PplSeqlenOption = None,
    ppl_corpus: PplCorpusOption = None,
    calibration_corpus: CalibrationCorpusOption = None,
    calibration_samples: Annotated[
        int | None,
        typer.Option("--calibration-samples", help="Calibration windows for calibrated compressors (default 128)."),
    ] = None,
    calibration_seqlen: Annotated[
        int | None, typer.Option("--calibration-seqlen", help="Tokens per calibration window (default 512).")
    ] = None,
    snapshots: Annotated[
        str | None,
        typer.Option(
            "--snapshots",
            help="Where shared model states wait: memory (default) or disk (safetensors in the run folder).",
        ),
    ] = None,
    topk: Annotated[
        int | None,
        typer.Option(
            "--topk",
            help="Record the top-k next tokens of the first edit's prompt after every step (0 = off; default 5).",
        ),
    ] = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    device_map: DeviceMapOption = None,
    max_memory: MaxMemoryOption = None,
    revision: RevisionOption = None,
    threads: ThreadsOption = None,
    deterministic: DeterministicOption = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write plots/*.png with report.md.")] = True,
    save_cells: Annotated[
        str | None,
        typer.Option(
            "--save-cells",
            help="Save the final models of these cells into OUT/models/: all, or globs over cell ids (e.g. 'memit>*').",
        ),
    ] = None,
    executor: Annotated[
        str, typer.Option("--executor", help="local (this process) or ray (tasks on a Ray cluster).")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Ray cluster address (host:port, ray://host:10001 or auto); default: start a local cluster.",
        ),
    ] = None,
    cpus_per_task: Annotated[
        float | None,
        typer.Option("--cpus-per-task", help="CPUs each Ray task asks for (default 1); also its torch threads."),
    ] = None,
    gpus_per_task: Annotated[
        float | None,
        typer.Option(
            "--gpus-per-task", help="GPUs each Ray task asks for; fractions (0.25) share one GPU between tasks."
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard", help="Run part I of N of the cells (I/N, e.g. 2/4); combine the folders with `lmcompose merge`."
        ),
    ] = None,
) -> None:
    """Run every order of STEPs at every strength of --vary for every replicate; write results.jsonl, report.md and plots."""  # noqa: E501 (the command's one-line help)
    from lmcompose.sweep import SweepSettings, run_sweep

    base = SweepSettings.from_file(config) if config is not None else SweepSettings()
    settings = base.merged(
        model=model,
        steps=list(steps) if steps else None,
        out=out,
        dataset=dataset,
        dataset_source=dataset_source,
        edits=edits,
        seed=seed,
        policy=policy,
        protocol=protocol,
        skip_invalid=True if skip_invalid else None,
        metrics=_metric_names(metrics),
        device=device,
        dtype=dtype,
        vary=vary,
        orders=orders,
        replicates=replicates,
        snapshots=snapshots,
        device_map=device_map,
        max_memory=max_memory,
        revision=revision,
        topk=topk,
        calibration_samples=calibration_samples,
        calibration_seqlen=calibration_seqlen,
        save_cells=save_cells,
        ppl_corpus=ppl_corpus,
        calibration_corpus=calibration_corpus,
        data_dir=_as_str(_data_dir(ctx)),
        threads=threads,
        deterministic=True if deterministic else None,
    )
    _apply_metric_flags(settings, ppl_tokens, ppl_seqlen)
    settings.validate()
    _quiet_transformers()
    progress = RichProgress()
    with progress.rp:
        rows, _ctx = run_sweep(
            settings,
            progress,
            executor=executor,
            ray_address=ray_address,
            cpus_per_task=cpus_per_task,
            gpus_per_task=gpus_per_task,
            shard=shard,
        )
    if shard:
        console.print(
            f"results: {Path(settings.out) / 'results.jsonl'} ({len(rows)} new rows); this shard is done: combine "
            "the shard folders with `lmcompose merge`",
            highlight=False,
            soft_wrap=True,
        )
        return
    if not rows:
        console.print("every cell of this sweep is already in its results.jsonl; rebuilding the report")
    from lmcompose.report import write_report

    report = write_report(settings.out, plots=plots)
    print_report(report)
    console.print(f"results: {Path(settings.out) / 'results.jsonl'}", highlight=False, soft_wrap=True)
    console.print(
        f"report: {report.path}"
        + (f" (+ {len(report.plots)} plots in {report.path.parent / 'plots'})" if report.plots else ""),
        highlight=False,
        soft_wrap=True,
    )
    if settings.save_cells:
        console.print(f"models: {Path(settings.out) / 'models'}", highlight=False, soft_wrap=True)


@app.command(
    epilog="Examples: lmcompose report runs/sweep-1a2b3c; lmcompose report runs/study-paper-0a1b2c; "
    "lmcompose report runs/x --json; lmcompose report runs/x --no-plots"
)
def report(
    run_dir: Annotated[
        Path,
        typer.Argument(
            metavar="RUN", help="A sweep's or study's run folder (the one holding results.jsonl).", show_default=False
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print A, P, OI and MCE (and A/P intervals) as JSON instead of tables.")
    ] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write plots/*.png with report.md.")] = True,
    axes: Annotated[
        str | None,
        typer.Option(
            "--axes",
            help="x axes of A and P, comma-separated: compression (1 − avg_bits/base_bits), strength, avg_bits, "
            "paper (raw average bits, as the paper's notebook); default compression,strength (a study: its "
            "first).",
        ),
    ] = None,
) -> None:
    """Rebuild a sweep's or study's tables, report.md and plots (and a study's rows.csv) from its results.jsonl and per_edit.jsonl."""  # noqa: E501 (the command's one-line help)
    from lmcompose.errors import DataError
    from lmcompose.report import write_report
    from lmcompose.studies.report import is_study, write_study_report

    if not run_dir.is_dir():
        raise DataError(
            f"run folder {run_dir} does not exist: give the --out folder of an `lmcompose sweep` or `lmcompose study`"
        )
    study_folder = is_study(run_dir)
    from lmcompose.report import check_axes

    chosen = check_axes([a.strip() for a in axes.split(",") if a.strip()] if axes is not None else None)
    rep = (
        write_study_report(run_dir, plots=plots, axis=chosen[0] if chosen else None)
        if study_folder
        else write_report(run_dir, plots=plots, axes=chosen)
    )
    if as_json:
        comps = {f"{e}|{d}": c for (e, d), c in rep.composability.items()} if study_folder else rep.composability
        ivs = {f"{e}|{d}": v for (e, d), v in rep.intervals.items()} if study_folder else rep.intervals
        out = {}
        for k, c in comps.items():
            out[k] = c.as_dict()
            if ivs.get(k):  # 95% bootstrap intervals of the edit criteria (from per_edit.jsonl)
                out[k]["intervals"] = {}
                for name, iv in ivs[k].items():
                    per_width = iv.P_per_width(c.interval)  # P's interval on the paper's [0, 1] scale
                    out[k]["intervals"][name] = {
                        "A": list(iv.A),
                        "P": list(iv.P),
                        "P_normalized": list(per_width) if per_width else None,
                        "resamples": len(iv.samples.A),
                    }
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    print_report(rep, tables=1 if study_folder else None)
    extra = f"; all rows: {rep.table_path}" if study_folder else ""
    console.print(
        f"report: {rep.path}{extra}" + (f" (+ {len(rep.plots)} plots in {run_dir / 'plots'})" if rep.plots else ""),
        highlight=False,
        soft_wrap=True,
    )


@app.command(epilog="Example: lmcompose validate experiment.yaml")
def validate(
    config: Annotated[
        Path,
        typer.Argument(
            help="YAML run settings (the keys of `lmcompose run -c` or `lmcompose sweep -c`) or a study file."
        ),
    ],
) -> None:
    """Check a run or sweep config, or a study file, without loading a model: steps, fields, ranges, metrics, datasets."""  # noqa: E501 (the command's one-line help)
    from lmcompose.compose import RunSettings
    from lmcompose.results import read_yaml
    from lmcompose.sweep import SWEEP_KEYS, SweepSettings

    data = read_yaml(config)
    from lmcompose.studies.spec import STUDY_MARKERS

    if STUDY_MARKERS & set(data):
        _validate_study(config, data)
        return
    is_sweep = bool(SWEEP_KEYS & set(data))
    settings = (SweepSettings if is_sweep else RunSettings).from_mapping(data, where=str(config)).with_protocol()
    steps, metrics = settings.validate()
    settings.check_inputs()  # the files it names exist, as the run checks before it writes
    from lmcompose.models.loading import resolve_device

    resolve_device(settings.device)  # the device exists on this machine
    cells = settings.cell_count() if is_sweep else 0
    what = f"sweep of {cells} cells over " if is_sweep else ""
    console.print(
        f"[green]ok[/]: {config} — {what}{len(steps)} step(s): {', '.join(s.name for s in steps)}; metrics: "
        f"{', '.join(m.name for m in metrics)}"
    )


def _validate_study(path: Path, data: dict[str, Any]) -> None:
    from lmcompose.studies import StudyError, load_study

    study = load_study(path, data)
    try:
        study.check_inputs()  # the files it names exist, as `study` checks before it writes
    except StudyError as exc:
        raise StudyError(f"{path}: {exc}") from None
    from lmcompose.models.loading import resolve_device

    resolve_device(study.device)
    cells = study.cells()
    c = study.counts(cells=cells)
    console.print(
        f"[green]ok[/]: {path} — study {study.name!r} (id {study.id}): {len(cells)} cells over "
        f"{len(study.entries)} compressor entr{'y' if len(study.entries) == 1 else 'ies'} × {len(study.datasets)} "
        f"dataset(s) × {study.replicates} replicate(s)",
        highlight=False,
        soft_wrap=True,
    )
    console.print(_counts_text(c), highlight=False, soft_wrap=True)


def _counts_text(counts: dict[str, Any]) -> str:
    def one(pc: Any) -> str:
        return f"{pc.edits} edits + {pc.compressions} compressions, {pc.evaluations} evaluations"

    return (
        f"model states: this study {one(counts['study'])}; as separate sweeps {one(counts['separate_sweeps'])}; "
        f"every cell on its own {one(counts['independent_cells'])}"
    )


class StudyProgress(RichProgress):
    """The study's own bar (states done, elapsed, ETA) above the steps' bars; when stderr
    is not a terminal (nohup, Slurm), one log line per finished model state instead."""

    def __init__(self) -> None:
        super().__init__()
        self.tty = err_console.is_terminal
        self._bar: Any = None

    def on_event(self, event: Any) -> None:
        from lmcompose.engine.progress import format_duration

        if not self.tty:
            err_console.print(f"[study] {event.line()}", markup=False, highlight=False, soft_wrap=True)
            return
        eta = format_duration(event.eta_s) if event.eta_s is not None else "?"
        text = f"study: {event.done}/{event.total} states, ETA {eta}"
        if self._bar is None:
            self._bar = self.rp.add_task(text, total=event.total)
        self.rp.update(self._bar, completed=event.done, description=text)


@app.command(
    epilog="Examples: lmcompose study studies/quick.yaml; lmcompose study studies/paper.yaml --out runs/paper; "
    "lmcompose study studies/paper.yaml --executor ray --ray-address 10.0.0.5:6379 --cpus-per-task 4 --gpus-per-task "
    "0.25; "
    "lmcompose study studies/paper.yaml --shard 2/4 --out runs/paper-2; lmcompose study studies/paper.yaml --plan"
)
def study(
    ctx: typer.Context,
    study_file: Annotated[
        Path, typer.Argument(metavar="STUDY.yaml", help="The study file (see docs/studies.md).", show_default=False)
    ],
    out: Annotated[
        str | None,
        typer.Option(
            "--out", "-o", help="Run folder (default runs/study-<name>-<id>); rerun the same command to resume."
        ),
    ] = None,
    executor: Annotated[
        str, typer.Option("--executor", help="local (this process) or ray (tasks on a Ray cluster).")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Ray cluster address (host:port, ray://host:10001 or auto); default: start a local cluster.",
        ),
    ] = None,
    cpus_per_task: Annotated[
        float | None,
        typer.Option(
            "--cpus-per-task",
            help="CPUs each Ray task asks for (default: the study's resources, else 1); also its torch threads.",
        ),
    ] = None,
    gpus_per_task: Annotated[
        float | None,
        typer.Option(
            "--gpus-per-task", help="GPUs each Ray task asks for; fractions (0.25) share one GPU between tasks."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="torch threads per process (default: the cores this process may use, or the Ray CPU request; 1 "
            "with --deterministic). Recorded in config.yaml; a resume must use the same.",
        ),
    ] = None,
    deterministic: Annotated[
        bool,
        typer.Option(
            "--deterministic",
            help="torch.use_deterministic_algorithms(True) in every process and 1 thread unless --threads (also "
            "deterministic: true in the study file). Recorded in config.yaml.",
        ),
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard", help="Run part I of N of the plan (I/N, e.g. 2/4); combine the folders with `lmcompose merge`."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: the study's device).")
    ] = None,
    plan_only: Annotated[
        bool,
        typer.Option("--plan", help="Print the plan's cells and work counts and stop (nothing is loaded or written)."),
    ] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write plots/*.png with report.md.")] = True,
    save_cells: Annotated[
        str | None,
        typer.Option(
            "--save-cells",
            help="Save the final models of these cells into OUT/models/: all, or globs over cell ids (e.g. "
            "'counterfact|*|memit>*').",
        ),
    ] = None,
) -> None:
    """Run a study: every editor × compressor × strength × order × dataset × replicate of STUDY.yaml, sharing every model state; write results.jsonl, report.md, rows.csv and plots."""  # noqa: E501 (the command's one-line help)
    from lmcompose.studies import load_study
    from lmcompose.studies.runner import parse_shard, run_study

    spec = load_study(study_file)
    parse_shard(shard)
    if threads is not None:
        from lmcompose.engine.threads import check_threads

        check_threads(threads)  # the flag's own message, before the Python API's
    if save_cells is not None or plan_only:
        cells = spec.cells()
        if save_cells is not None:
            from lmcompose.engine.saving import match_cells

            match_cells(cells, save_cells)
        if plan_only:
            console.print(f"study {spec.name!r} (id {spec.id}): {len(cells)} cells", highlight=False)
            console.print(_counts_text(spec.counts(cells=cells)), highlight=False, soft_wrap=True)
            return
    _quiet_transformers()
    progress = StudyProgress()
    with progress.rp:
        result = run_study(
            spec,
            out=out,
            executor=executor,
            ray_address=ray_address,
            cpus_per_task=cpus_per_task,
            gpus_per_task=gpus_per_task,
            threads=threads,
            deterministic=True if deterministic else None,
            shard=shard,
            device=device,
            data_dir=_data_dir(ctx),
            progress=progress,
            on_progress=progress.on_event,
            plots=plots,
            save_cells=save_cells,
        )
    if result.report is not None:
        print_report(result.report, tables=1)
    for failure in result.failures:
        err_console.print(f"[bold red]error:[/] {failure.line()}", highlight=False, soft_wrap=True)
    console.print(
        f"results: {result.folder / 'results.jsonl'} ({result.rows} new rows, {result.seconds:.0f} s)",
        highlight=False,
        soft_wrap=True,
    )
    console.print(_counts_text(result.counts), highlight=False, soft_wrap=True)
    if result.report is not None:
        console.print(
            f"report: {result.report.path}; all rows: {result.report.table_path}"
            + (f" (+ {len(result.report.plots)} plots in {result.folder / 'plots'})" if result.report.plots else ""),
            highlight=False,
            soft_wrap=True,
        )
    if save_cells:
        console.print(f"models: {result.folder / 'models'}", highlight=False, soft_wrap=True)
    if result.report is None and result.missing:
        what = (
            "this shard is done; combine the shard folders with `lmcompose merge`"
            if shard and not result.failures
            else f"{len(result.missing)} cell(s) are not finished; rerun the same command to resume"
        )
        console.print(what, highlight=False, soft_wrap=True)
    if result.failures:
        raise typer.Exit(1)


@app.command(epilog="Example: lmcompose merge runs/paper-1 runs/paper-2 runs/paper-3 --out runs/paper")
def merge(
    shards: Annotated[
        list[Path],
        typer.Argument(
            metavar="DIR...",
            help="Shard folders of one study or sweep (`lmcompose study --shard I/N --out DIR`).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder to write the merged study or sweep to (resumed if it holds it)."),
    ],
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write plots/*.png with report.md.")] = True,
) -> None:
    """Combine the shard folders of one study or sweep into one folder (rows checked to agree) and write its report."""
    from lmcompose.reports.study import StudyReport
    from lmcompose.studies.runner import merge_studies

    added, missing, rep = merge_studies(shards, out, plots=plots)
    if rep is not None:
        print_report(rep, tables=1 if isinstance(rep, StudyReport) else None)
    console.print(f"merged {added} new rows into {out / 'results.jsonl'}", highlight=False, soft_wrap=True)
    if missing:
        console.print(
            f"{len(missing)} cell(s) are still missing (a shard not run yet?), e.g. {missing[0]}; "
            "merge again when every shard is done",
            highlight=False,
            soft_wrap=True,
        )
    elif rep is not None:
        console.print(f"report: {rep.path}", highlight=False, soft_wrap=True)


@app.command(epilog="Example: lmcompose models --prepare")
def models(
    prepare: Annotated[
        bool, typer.Option("--prepare", help="Convert every installed named model to its safetensors cache now.")
    ] = False,
) -> None:
    """List the named default models and whether their packages are installed and converted."""
    from lmcompose.errors import ModelLoadError
    from lmcompose.models.loading import (
        NAMED_MODELS,
        cache_dir,
        convert_gguf,
        gguf_cache_folder,
    )

    table = Table(title="named models")
    for col in ("name", "what", "format", "status"):
        table.add_column(col)
    for name, nm in NAMED_MODELS.items():
        try:
            gguf = nm.locate(cache_dir())
            folder = gguf_cache_folder(gguf, cache_dir())
            if prepare and not (folder / "config.json").exists():
                _quiet_transformers()
                convert_gguf(gguf, cache_dir(), RichProgress())
            status = (
                f"cached: {folder}"
                if (folder / "config.json").exists()
                else f"installed: {gguf} (converted on first use)"
            )
        except ModelLoadError as exc:
            status = f"[red]not available[/]: {exc}"
        table.add_row(name, nm.description, nm.format, status)
    console.print(table)


@app.command(
    epilog="Examples: lmcompose export runs/x --format compressed-tensors --out exported/x; "
    "lmcompose export saved-model/ --out exported/y"
)
def export(
    ctx: typer.Context,
    run_dir: Annotated[
        Path,
        typer.Argument(
            metavar="RUN",
            help="A `lmcompose run` folder (its steps are replayed: runs keep results, not weights) or a folder "
            "written by LM.save.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder to write the checkpoint to (default RUN/export-FORMAT).")
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="Checkpoint format: compressed-tensors (int weights + scales, sparsity declared; needs pip install "
            "'lmcompose-cli\\[export]').",
        ),
    ] = "compressed-tensors",
    quantization_format: Annotated[
        str,
        typer.Option(
            "--quantization-format",
            help="auto (packed when every grid is symmetric, else int8 codes: what plain from_pretrained loads) | "
            "pack-quantized | int-quantized.",
        ),
    ] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Write the compressed (quantized and/or pruned) model of RUN as a checkpoint that plain transformers (and vLLM) load."""  # noqa: E501 (the command's one-line help)
    from lmcompose.export import export as export_model

    _quiet_transformers()
    target = out if out is not None else run_dir / f"export-{fmt}"
    progress = RichProgress()
    with progress.rp:
        written = export_model(
            run_dir,
            target,
            fmt,
            progress,
            quantization_format=quantization_format,
            overwrite=overwrite,
            data_dir=_data_dir(ctx),
        )
    console.print(f"wrote {fmt} checkpoint: {written}")


def _install_plugin_commands() -> None:
    try:
        plugin_api.register_cli_commands(app)
    except (DuplicateNameError, PluginLoadError) as exc:
        err_console.print(f"[bold red]plugin error:[/] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


def main() -> None:
    if "--strict" in sys.argv[1:]:
        os.environ["LMCOMPOSE_STRICT_PLUGINS"] = "1"
    import warnings

    from lmcompose.plugins import PluginLoadWarning

    warnings.simplefilter("default", PluginLoadWarning)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"  # type: ignore[assignment]
    _install_plugin_commands()
    app()


if __name__ == "__main__":
    main()
