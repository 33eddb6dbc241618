"""Listing plugins, --help and config validation never import torch (cheap startup)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import sys
sys.argv = ["lmcompose", *{args!r}]
from lmcompose_cli.main import main
try:
    main()
except SystemExit as e:
    code = e.code
print("TORCH_IMPORTED" if "torch" in sys.modules else "TORCH_NOT_IMPORTED")
"""


STUDY = str(Path(__file__).parent.parent / "studies" / "paper.yaml")
EDITORS = str(Path(__file__).resolve().parents[1] / "studies" / "editors.yaml")  # alphaedit, ft, lora


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["plugins"],
        ["plugins", "--json"],
        ["run", "--help"],
        ["validate", "{cfg}"],
        ["validate", STUDY],
        ["validate", EDITORS],
        ["study", STUDY, "--plan"],
        ["study", "--help"],
    ],
)
def test_no_torch_import(args, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: smollm2-135m\nsteps: [magnitude:sparsity=0.5, rtn:bits=4]\n")
    args = [a.format(cfg=cfg) for a in args]
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=120)
    assert "TORCH_NOT_IMPORTED" in out.stdout, out.stdout + out.stderr


def test_the_engine_imports_no_command_module():
    """docs/design.md: commands build plans and call the engine, never the reverse."""
    engine = Path(__file__).parent.parent / "core" / "src" / "lmcompose" / "engine"
    commands = ("lmcompose.compose", "lmcompose.sweep", "lmcompose.studies", "lmcompose_cli")
    for path in sorted(engine.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            bad = [n for n in names if n.startswith(commands)]
            assert not bad, f"{path.name} imports {bad}"


def test_validate_checks_the_files_a_study_names_without_torch(tmp_path):
    model = tmp_path / "model"  # what validate looks at: config.json and a tokenizer file, never the weights
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "tokenizer.json").write_text("{}")
    (tmp_path / "edits.json").write_text("[]")
    (tmp_path / "own.txt").write_text("text")
    study = tmp_path / "s.yaml"
    study.write_text(
        f"model: {model}\ndatasets: [{{name: counterfact, source: {tmp_path / 'edits.json'}}}]\n"
        "editors: [memit]\nedits: 2\ncompressors: [{step: magnitude, vary: {sparsity: [0.5]}}]\n"
        f"budgets: {{ppl_corpus: {tmp_path / 'own.txt'}, calibration_corpus: hub:{tmp_path}}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=["validate", str(study)])], capture_output=True, text=True, timeout=120
    )
    assert "ok:" in out.stdout and "TORCH_NOT_IMPORTED" in out.stdout, out.stdout + out.stderr
