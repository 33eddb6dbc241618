"""Listing plugins, --help and config validation never import torch (cheap startup)."""

from __future__ import annotations

import subprocess
import sys

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


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["plugins", "--json"], ["run", "--help"], ["validate", "{cfg}"]])
def test_no_torch_import(args, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: smollm2-135m\nsteps: [magnitude:sparsity=0.5, rtn:bits=4]\n")
    args = [a.format(cfg=cfg) for a in args]
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=120)
    assert "TORCH_NOT_IMPORTED" in out.stdout, out.stdout + out.stderr
