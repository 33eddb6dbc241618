"""The commands, one module per group; importing this package registers them all on
:data:`lmcompose_cli.app.app` (``lmcompose --help`` lists them in
:data:`lmcompose_cli.app.COMMAND_ORDER`)."""

from __future__ import annotations

from lmcompose_cli.commands import models, plugins, reports, runs, studies

__all__ = ["models", "plugins", "reports", "runs", "studies"]
