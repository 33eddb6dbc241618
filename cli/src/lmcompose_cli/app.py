"""The ``lmcompose`` Typer app, its global options, and the error policy: every command's
failure becomes one message and an exit code (:func:`describe_failure`).

The commands live in :mod:`lmcompose_cli.commands` and register themselves on :data:`app`;
:data:`COMMAND_ORDER` is the order ``lmcompose --help`` lists them in.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from lmcompose.errors import DuplicateNameError, LMComposeError, PluginLoadError, UsageError
from rich.markup import escape
from typer.core import TyperGroup

from lmcompose_cli.render import err_console

DEBUG_ENV = "LMCOMPOSE_DEBUG"
DATA_DIR_KEY = "lmcompose.data_dir"

#: The order of ``lmcompose --help``'s commands; commands that plugins add follow them, then
#: the ``list`` group.
COMMAND_ORDER = (
    "plugins",
    "install",
    "uninstall",
    "new-plugin",
    "run",
    "sweep",
    "report",
    "validate",
    "study",
    "merge",
    "models",
    "export",
)


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

    # typer hands its commands a typer.Context (the group's context_class); the base class
    # declares the click Context that typer vendors
    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
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


def data_dir_of(ctx: typer.Context) -> Path | None:
    """This invocation's --data-dir (None: the settings' data_dir, else LMCOMPOSE_DATA_DIR)."""
    return ctx.meta.get(DATA_DIR_KEY)
