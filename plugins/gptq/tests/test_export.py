"""`lmcompose export --format compressed-tensors`: a real packed checkpoint that transformers
reloads to the same model (needs the optional compressed-tensors package)."""

from __future__ import annotations

import json

import pytest
import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, build_metrics, parse_step
from lmcompose.errors import UsageError
from lmcompose.models.tiny import tiny_model

compressed_tensors = pytest.importorskip("compressed_tensors")


def ctx():
    return Context(calibration_samples=4, calibration_seqlen=32)


def reload(folder):
    from lmcompose.models.handle import LM
    from transformers import AutoModelForCausalLM, AutoTokenizer, CompressedTensorsConfig

    # dequantize=True: compressed-tensors 0.19's packed-load path mis-sizes asymmetric zero points
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=CompressedTensorsConfig(dequantize=True))
    return LM(model.eval(), AutoTokenizer.from_pretrained(folder), tiny_model("llama").arch)


def perplexity(lm):
    metric = build_metrics(["perplexity"], {"perplexity": {"seqlen": 128, "max_tokens": 1024}})[0]
    return metric.compute(lm, Context())["perplexity"]


@pytest.mark.parametrize("step", ["gptq:bits=4,group_size=32", "gptq:bits=3,group_size=0,symmetric=true,act_order=true",
                                  "awq:bits=4,group_size=16,n_grid=4", "rtn:bits=8,group_size=64"])
def test_packed_checkpoint_reloads_to_the_same_model(step, tmp_path):
    from lmcompose.export import export_compressed_tensors
    from safetensors import safe_open

    lm = tiny_model("llama")
    build_intervention(parse_step(step)).apply(lm, ctx())
    export_compressed_tensors(lm, tmp_path / "ct")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())
    assert config["quantization_config"]["format"] == "pack-quantized"
    with safe_open(str(tmp_path / "ct" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        packed = f.get_tensor("model.layers.0.mlp.down_proj.weight_packed")
    assert "model.layers.0.mlp.down_proj.weight" not in keys and packed.dtype == torch.int32
    again = reload(tmp_path / "ct")
    for name, _ in lm.linear_layers():
        assert torch.equal(again.weight(name), lm.weight(name)), name
    assert perplexity(again) == pytest.approx(perplexity(lm), rel=0.01)


def test_cli_exports_a_run_by_replaying_it(tmp_path):
    from lmcompose_cli.main import app
    from typer.testing import CliRunner

    base = tiny_model("llama")
    base.save(tmp_path / "base")
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(tmp_path / "base"), "gptq:bits=4,group_size=32,n_samples=4,seqlen=32",
                              "--metrics", "avg_bits", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--format", "compressed-tensors", "--out", str(tmp_path / "ct")])
    assert res.exit_code == 0, res.output
    again = reload(tmp_path / "ct")
    expected = tiny_model("llama")
    build_intervention(parse_step("gptq:bits=4,group_size=32,n_samples=4,seqlen=32")).apply(expected, Context())
    for name, _ in expected.linear_layers():
        assert torch.equal(again.weight(name), expected.weight(name)), name


def test_clear_errors(tmp_path):
    from lmcompose.export import ExportError, export, export_compressed_tensors

    lm = tiny_model("llama")
    with pytest.raises(ExportError, match="no quantized layer"):
        export_compressed_tensors(lm, tmp_path / "a")
    build_intervention(parse_step("rtn:bits=4,group_size=48")).apply(lm, ctx())
    with pytest.raises(ExportError, match="group size 48 does not divide its width"):
        export_compressed_tensors(lm, tmp_path / "b")
    lm = tiny_model("llama")
    build_intervention(parse_step("rtn:bits=4,group_size=32")).apply(lm, ctx())
    with torch.no_grad():
        lm.weight("model.layers.0.mlp.down_proj").add_(0.001)
    with pytest.raises(ExportError, match="no longer on the 4-bit grid"):
        export_compressed_tensors(lm, tmp_path / "c")
    with pytest.raises(UsageError, match="is not one of compressed-tensors"):
        export(tmp_path, tmp_path / "d", fmt="gguf")
    with pytest.raises(ExportError, match="neither a run folder"):
        export(tmp_path, tmp_path / "e")


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    import sys

    from lmcompose.export import ExportError, export_compressed_tensors

    monkeypatch.setitem(sys.modules, "compressed_tensors", None)
    with pytest.raises(ExportError, match=r"pip install \"lmcompose-cli\[export\]\""):
        export_compressed_tensors(tiny_model("llama"), tmp_path)
