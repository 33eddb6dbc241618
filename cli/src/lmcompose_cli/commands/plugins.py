"""Plugins: ``plugins`` (what is loaded), ``install`` / ``uninstall`` (registry.yaml),
``new-plugin`` (the template), and ``list interventions|metrics|datasets|architectures``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from lmcompose import plugins as plugin_api

from lmcompose_cli.app import app, list_app
from lmcompose_cli.options import DryRunOption, PluginNameArg
from lmcompose_cli.render import console, err_console, print_available, print_plugins, print_registry

if TYPE_CHECKING:
    from lmcompose_cli.render import Listing

#: what ``lmcompose list KIND`` lists, by KIND
REGISTRIES: dict[str, Callable[[], Listing]] = {
    "interventions": plugin_api.get_interventions,
    "metrics": plugin_api.get_metrics,
    "datasets": plugin_api.get_datasets,
    "architectures": plugin_api.get_architectures,
}


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
    for kind, get_registry in REGISTRIES.items():
        for entry in get_registry().entries():
            provided.setdefault(entry.distribution, []).append(f"{kind[:-1]}:{entry.name}")
    if as_json:
        out = []
        for info in infos:
            d = info.as_dict()
            d["provides"] = sorted(provided.get(info.distribution, [])) if info.error is None else []
            out.append(d)
        typer.echo(json.dumps(out, indent=2))
        return
    print_plugins(infos, provided)


def _plugins_available(as_json: bool) -> None:
    from lmcompose_cli.registry_file import read_registry

    entries = read_registry()
    if not as_json:
        print_available(entries)
        return
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
    name: PluginNameArg = None,
    package: Annotated[
        str | None,
        typer.Option("--package", help="Install this pip requirement instead (a plugin not in the registry)."),
    ] = None,
    dry_run: DryRunOption = False,
) -> None:
    """pip-install a plugin listed in registry.yaml (first-party plugins from this checkout's plugins/ folder)."""
    from lmcompose_cli.registry_file import install_command

    _run_pip(install_command(name, package), dry_run)


@app.command(epilog="Examples: lmcompose uninstall counterfact; lmcompose uninstall --package lmcompose-noise")
def uninstall(
    name: PluginNameArg = None,
    package: Annotated[str | None, typer.Option("--package", help="Uninstall this distribution instead.")] = None,
    dry_run: DryRunOption = False,
) -> None:
    """pip-uninstall a plugin listed in registry.yaml."""
    from lmcompose_cli.registry_file import uninstall_command

    _run_pip(uninstall_command(name, package), dry_run)


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


@list_app.command("interventions")
def list_interventions() -> None:
    """Interventions: kind, strength knob, config fields."""
    print_registry("interventions", REGISTRIES["interventions"]())


@list_app.command("metrics")
def list_metrics() -> None:
    """Metrics: result keys and config fields."""
    print_registry("metrics", REGISTRIES["metrics"]())


@list_app.command("datasets")
def list_datasets() -> None:
    """Edit datasets and text corpora."""
    print_registry("datasets", REGISTRIES["datasets"]())


@list_app.command("architectures")
def list_architectures() -> None:
    """Architecture specs (model types each one covers)."""
    print_registry("architectures", REGISTRIES["architectures"]())
