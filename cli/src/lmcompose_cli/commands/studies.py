"""Studies: ``study`` (the paper's whole experiment from one file, locally or on Ray, whole
or in shards) and ``merge`` (shard folders into one)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmcompose_cli.app import app, data_dir_of
from lmcompose_cli.options import ExecutorOption, GpusPerTaskOption, PlotsOption, RayAddressOption
from lmcompose_cli.render import StudyProgress, counts_text, err_console, print_line, print_report, quiet_transformers


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
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    cpus_per_task: Annotated[
        float | None,
        typer.Option(
            "--cpus-per-task",
            help="CPUs each Ray task asks for (default: the study's resources, else 1); also its torch threads.",
        ),
    ] = None,
    gpus_per_task: GpusPerTaskOption = None,
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
    plots: PlotsOption = True,
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
            print_line(f"study {spec.name!r} (id {spec.id}): {len(cells)} cells")
            print_line(counts_text(spec.counts(cells=cells)))
            return
    quiet_transformers()
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
            data_dir=data_dir_of(ctx),
            progress=progress,
            on_progress=progress.on_event,
            plots=plots,
            save_cells=save_cells,
        )
    if result.report is not None:
        print_report(result.report, tables=1)
    for failure in result.failures:
        err_console.print(f"[bold red]error:[/] {failure.line()}", highlight=False, soft_wrap=True)
    print_line(f"results: {result.folder / 'results.jsonl'} ({result.rows} new rows, {result.seconds:.0f} s)")
    print_line(counts_text(result.counts))
    if result.report is not None:
        print_line(
            f"report: {result.report.path}; all rows: {result.report.table_path}"
            + (f" (+ {len(result.report.plots)} plots in {result.folder / 'plots'})" if result.report.plots else "")
        )
    if save_cells:
        print_line(f"models: {result.folder / 'models'}")
    if result.report is None and result.missing:
        print_line(
            "this shard is done; combine the shard folders with `lmcompose merge`"
            if shard and not result.failures
            else f"{len(result.missing)} cell(s) are not finished; rerun the same command to resume"
        )
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
    plots: PlotsOption = True,
) -> None:
    """Combine the shard folders of one study or sweep into one folder (rows checked to agree) and write its report."""
    from lmcompose.reports.study import StudyReport
    from lmcompose.studies.runner import merge_studies

    added, missing, rep = merge_studies(shards, out, plots=plots)
    if rep is not None:
        print_report(rep, tables=1 if isinstance(rep, StudyReport) else None)
    print_line(f"merged {added} new rows into {out / 'results.jsonl'}")
    if missing:
        print_line(
            f"{len(missing)} cell(s) are still missing (a shard not run yet?), e.g. {missing[0]}; "
            "merge again when every shard is done"
        )
    elif rep is not None:
        print_line(f"report: {rep.path}")
