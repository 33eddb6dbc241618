"""Docs that cannot drift: the --help texts quoted in docs/cli.md are the real ones.

Regenerate after changing the CLI: ``.venv/bin/python tests/test_docs.py --update``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).parent.parent / "docs" / "cli.md"
COMMANDS = [
    [],
    ["run"],
    ["sweep"],
    ["study"],
    ["merge"],
    ["report"],
    ["list"],
    ["plugins"],
    ["validate"],
    ["models"],
    ["new-plugin"],
    ["install"],
    ["uninstall"],
    ["export"],
]
BLOCK = re.compile(r"<!-- help: (?P<cmd>[^>]*) -->\n```text\n(?P<body>.*?)```", re.S)


def help_text(args: list[str]) -> str:
    from lmcompose_cli.main import app
    from typer.testing import CliRunner

    env = {"TERMINAL_WIDTH": "100", "_TYPER_FORCE_DISABLE_TERMINAL": "1", "NO_COLOR": "1", "COLUMNS": "100"}
    res = CliRunner(env=env).invoke(app, [*args, "--help"], prog_name="lmcompose")
    assert res.exit_code == 0, res.output
    return "\n".join(line.rstrip() for line in res.output.strip("\n").splitlines()) + "\n"


def documented() -> dict[str, str]:
    return {m["cmd"].strip(): m["body"] for m in BLOCK.finditer(DOC.read_text())}


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "root")
def test_cli_help_in_docs_matches_the_real_help(args):
    blocks = documented()
    key = " ".join(["lmcompose", *args])
    assert key in blocks, f"docs/cli.md has no help block for `{key}`"
    assert blocks[key] == help_text(args), (
        f"docs/cli.md is out of date for `{key}`: run python tests/test_docs.py --update"
    )


def update() -> None:
    text = DOC.read_text()
    for args in COMMANDS:
        key = " ".join(["lmcompose", *args])
        block = f"<!-- help: {key} -->\n```text\n{help_text(args)}```"
        pattern = re.compile(rf"<!-- help: {re.escape(key)} -->\n```text\n.*?```", re.S)
        text, n = pattern.subn(lambda _m, b=block: b, text)
        if n == 0:
            text += f"\n### `{key} --help`\n\n{block}\n"
    DOC.write_text(text)


if __name__ == "__main__" and "--update" in sys.argv:
    update()
