"""Models: ``models`` (the named default models) and ``export`` (a run's compressed model as
a checkpoint plain transformers loads)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmcompose_cli.app import app, data_dir_of
from lmcompose_cli.render import RichProgress, console, print_models, quiet_transformers


@app.command(epilog="Example: lmcompose models --prepare")
def models(
    prepare: Annotated[
        bool, typer.Option("--prepare", help="Convert every installed named model to its safetensors cache now.")
    ] = False,
) -> None:
    """List the named default models and whether their packages are installed and converted."""
    from lmcompose.errors import ModelLoadError
    from lmcompose.models.loading import NAMED_MODELS, cache_dir, convert_gguf, gguf_cache_folder

    rows = []
    for name, nm in NAMED_MODELS.items():
        try:
            gguf = nm.locate(cache_dir())
            folder = gguf_cache_folder(gguf, cache_dir())
            if prepare and not (folder / "config.json").exists():
                quiet_transformers()
                convert_gguf(gguf, cache_dir(), RichProgress())
            status = (
                f"cached: {folder}"
                if (folder / "config.json").exists()
                else f"installed: {gguf} (converted on first use)"
            )
        except ModelLoadError as exc:
            status = f"[red]not available[/]: {exc}"
        rows.append((name, nm.description, nm.format, status))
    print_models(rows)


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

    quiet_transformers()
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
            data_dir=data_dir_of(ctx),
        )
    console.print(f"wrote {fmt} checkpoint: {written}")
