"""Runs and sweeps: ``run`` (one sequence of steps), ``sweep`` (every order at every
strength) and ``validate`` (a run or sweep config, or a study file, checked without a model)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from lmcompose_cli.app import app
from lmcompose_cli.options import (
    ExecutorOption,
    GpusPerTaskOption,
    ModelArg,
    ModelFlags,
    PlotsOption,
    RayAddressOption,
    RunFlags,
    settings_from_flags,
    with_flag_groups,
)
from lmcompose_cli.render import (
    RichProgress,
    console,
    counts_text,
    print_line,
    print_report,
    print_rows,
    quiet_transformers,
)


@app.command(
    epilog="Examples: lmcompose run smollm2-135m magnitude:sparsity=0.5 rtn:bits=4 --out runs/x; "
    "lmcompose run gemma3-270m magnitude:structure=2:4 --ppl-tokens all; lmcompose run -c experiment.yaml"
)
@with_flag_groups
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
    run_flags: RunFlags = RunFlags(),
    model_flags: ModelFlags = ModelFlags(),
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
    from lmcompose.compose import RunSettings
    from lmcompose.compose import run as run_sequence

    settings = settings_from_flags(
        RunSettings,
        ctx,
        config,
        run_flags,
        model_flags,
        model=model,
        steps=list(steps) if steps else None,
        out=out,
        dataset=dataset,
        dataset_source=dataset_source,
        edits=edits,
        skip_invalid=skip_invalid,
        save_model=save_model,
        overwrite=overwrite,
    )
    quiet_transformers()
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
        print_line(f"model: {settings.save_model} (AutoModelForCausalLM.from_pretrained loads it)")


@app.command(
    epilog="Examples: lmcompose sweep smollm2-135m memit wanda --vary wanda.sparsity=0.25,0.5,0.75 --edits 5; "
    "lmcompose sweep smollm2-135m magnitude rtn:group_size=64 --vary rtn.bits=8,4,3 --orders "
    "'magnitude,rtn;rtn,magnitude'; "
    "lmcompose sweep -c sweep.yaml"
)
@with_flag_groups
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
    run_flags: RunFlags = RunFlags(),
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
    model_flags: ModelFlags = ModelFlags(),
    plots: PlotsOption = True,
    save_cells: Annotated[
        str | None,
        typer.Option(
            "--save-cells",
            help="Save the final models of these cells into OUT/models/: all, or globs over cell ids (e.g. 'memit>*').",
        ),
    ] = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    cpus_per_task: Annotated[
        float | None,
        typer.Option("--cpus-per-task", help="CPUs each Ray task asks for (default 1); also its torch threads."),
    ] = None,
    gpus_per_task: GpusPerTaskOption = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard", help="Run part I of N of the cells (I/N, e.g. 2/4); combine the folders with `lmcompose merge`."
        ),
    ] = None,
) -> None:
    """Run every order of STEPs at every strength of --vary for every replicate; write results.jsonl, report.md and plots."""  # noqa: E501 (the command's one-line help)
    from lmcompose.sweep import SweepSettings, run_sweep

    settings = settings_from_flags(
        SweepSettings,
        ctx,
        config,
        run_flags,
        model_flags,
        model=model,
        steps=list(steps) if steps else None,
        out=out,
        dataset=dataset,
        dataset_source=dataset_source,
        edits=edits,
        skip_invalid=skip_invalid,
        vary=vary,
        orders=orders,
        replicates=replicates,
        snapshots=snapshots,
        topk=topk,
        calibration_samples=calibration_samples,
        calibration_seqlen=calibration_seqlen,
        save_cells=save_cells,
    )
    quiet_transformers()
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
    if settings.out is None:  # run_sweep names the folder it writes (runs/sweep-<id> when not given)
        raise RuntimeError("run_sweep returned without naming its run folder (settings.out)")
    out_dir = Path(settings.out)
    if shard:
        print_line(
            f"results: {out_dir / 'results.jsonl'} ({len(rows)} new rows); this shard is done: combine "
            "the shard folders with `lmcompose merge`"
        )
        return
    if not rows:
        console.print("every cell of this sweep is already in its results.jsonl; rebuilding the report")
    from lmcompose.reports import write_report

    report = write_report(out_dir, plots=plots)
    print_report(report)
    print_line(f"results: {out_dir / 'results.jsonl'}")
    print_line(
        f"report: {report.path}"
        + (f" (+ {len(report.plots)} plots in {report.path.parent / 'plots'})" if report.plots and report.path else "")
    )
    if settings.save_cells:
        print_line(f"models: {out_dir / 'models'}")


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
    from lmcompose.models.loading import resolve_device
    from lmcompose.results import read_yaml
    from lmcompose.studies.spec import STUDY_MARKERS
    from lmcompose.sweep import SWEEP_KEYS, SweepSettings

    data = read_yaml(config)
    if STUDY_MARKERS & set(data):
        _validate_study(config, data)
        return
    is_sweep = bool(SWEEP_KEYS & set(data))
    settings = (SweepSettings if is_sweep else RunSettings).from_mapping(data, where=str(config)).with_protocol()
    steps, metrics = settings.validate()
    settings.check_inputs()  # the files it names exist, as the run checks before it writes
    resolve_device(settings.device)  # the device exists on this machine
    cells = settings.cell_count() if isinstance(settings, SweepSettings) else 0
    what = f"sweep of {cells} cells over " if is_sweep else ""
    console.print(
        f"[green]ok[/]: {config} — {what}{len(steps)} step(s): {', '.join(s.name for s in steps)}; metrics: "
        f"{', '.join(m.name for m in metrics)}"
    )


def _validate_study(path: Path, data: Mapping[str, object]) -> None:
    from lmcompose.models.loading import resolve_device
    from lmcompose.studies import StudyError, load_study

    study = load_study(path, data)
    try:
        study.check_inputs()  # the files it names exist, as `study` checks before it writes
    except StudyError as exc:
        raise StudyError(f"{path}: {exc}") from None
    resolve_device(study.device)
    cells = study.cells()
    print_line(
        f"[green]ok[/]: {path} — study {study.name!r} (id {study.id}): {len(cells)} cells over "
        f"{len(study.entries)} compressor entr{'y' if len(study.entries) == 1 else 'ies'} × {len(study.datasets)} "
        f"dataset(s) × {study.replicates} replicate(s)"
    )
    print_line(counts_text(study.counts(cells=cells)))
