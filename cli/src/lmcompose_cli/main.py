"""``lmcompose``: discover plugins, list what they provide, run sequences of interventions.

The console script's entry point (:func:`main`). The app and its error policy are in
:mod:`lmcompose_cli.app`, the options commands share in :mod:`lmcompose_cli.options`, what
they print in :mod:`lmcompose_cli.render`, and the commands in :mod:`lmcompose_cli.commands`.

Startup stays cheap: nothing here imports torch until a command that needs a model runs.
"""

from __future__ import annotations

import os
import sys

from lmcompose import plugins as plugin_api
from lmcompose.errors import DuplicateNameError, PluginLoadError

from lmcompose_cli import commands
from lmcompose_cli.app import app
from lmcompose_cli.render import err_console

__all__ = ["app", "commands", "main"]


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
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    _install_plugin_commands()
    app()


if __name__ == "__main__":
    main()
