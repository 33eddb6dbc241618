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
    """The export as plain transformers loads it: no options, no lmcompose code involved."""
    from lmcompose.models.handle import LM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    x = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        model(x)  # compressed-tensors decompresses packed layers on the first forward pass
    return LM(model.eval(), AutoTokenizer.from_pretrained(folder), tiny_model("llama").arch)


def dense_weight(module):
    return module.weight


def perplexity(lm):
    metric = build_metrics(["perplexity"], {"perplexity": {"seqlen": 128, "max_tokens": 1024}})[0]
    return metric.compute(lm, Context())["perplexity"]


@pytest.mark.parametrize(
    ("steps", "fmt", "structure"),
    [
        (["gptq:bits=4,group_size=32"], "int-quantized", None),  # asymmetric grids: int8 codes (what the loader reads)
        (["gptq:bits=3,group_size=0,symmetric=true,act_order=true"], "pack-quantized", None),
        (["awq:bits=4,group_size=16,n_grid=4"], "int-quantized", None),
        (["rtn:bits=8,group_size=64,symmetric=true"], "pack-quantized", None),
        (["magnitude:structure=2:4"], "dense", "2:4"),  # pruned only
        (["magnitude:sparsity=0.5"], "dense", "unstructured"),
        (["magnitude:structure=2:4", "rtn:bits=4,group_size=32,symmetric=true"], "pack-quantized", "2:4"),  # both
        (["magnitude:sparsity=0.3", "gptq:bits=4,group_size=32"], "int-quantized", "unstructured"),
        # a group as wide as a layer or wider (128: the tiny model's layers are 64 and 128 wide) is
        # one group per row, written as the channel strategy
        (["magnitude:sparsity=0.5", "rtn:bits=4,group_size=128"], "int-quantized", "unstructured"),
        (["rtn:bits=4,group_size=256,symmetric=true"], "pack-quantized", None),
    ],
)
def test_export_loads_with_plain_from_pretrained(steps, fmt, structure, tmp_path):
    from lmcompose.compose import compose
    from lmcompose.export import _NoMetrics, export_compressed_tensors
    from safetensors import safe_open

    lm = tiny_model("llama")
    compose(lm, steps, metrics=[_NoMetrics()], ctx=ctx())  # policy project: the pruned zeros are kept through gptq
    export_compressed_tensors(lm, tmp_path / "ct")
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert qc["format"] == fmt
    sparsity = qc.get("sparsity_config") or {}
    assert sparsity.get("sparsity_structure") == structure
    if structure:
        assert sparsity["format"] == "dense" and "model.layers.0.mlp.down_proj" in sparsity["targets"]
        assert 0.25 < sparsity["global_sparsity"] < 0.6
    with safe_open(str(tmp_path / "ct" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        stored = {k: f.get_tensor(k) for k in keys if k.startswith("model.layers.0.mlp.down_proj.")}
    if fmt == "pack-quantized":
        assert "model.layers.0.mlp.down_proj.weight" not in keys
        assert stored["model.layers.0.mlp.down_proj.weight_packed"].dtype == torch.int32
    elif fmt == "int-quantized":
        assert stored["model.layers.0.mlp.down_proj.weight"].dtype == torch.int8
    again = reload(tmp_path / "ct")
    for name, _ in lm.linear_layers():
        assert torch.equal(dense_weight(again.model.get_submodule(name)).float(), lm.weight(name)), name
    assert perplexity(again) == pytest.approx(perplexity(lm), rel=0.01)


def test_pack_quantized_can_be_forced_for_asymmetric_grids(tmp_path):
    """vLLM's weight-only kernels read packed asymmetric checkpoints; transformers then needs
    dequantize=True (docs/interventions.md)."""
    from lmcompose.export import export_compressed_tensors
    from lmcompose.models.handle import LM
    from transformers import AutoModelForCausalLM, AutoTokenizer, CompressedTensorsConfig

    lm = tiny_model("llama")
    build_intervention(parse_step("rtn:bits=4,group_size=32")).apply(lm, ctx())
    export_compressed_tensors(lm, tmp_path / "ct", quantization_format="pack-quantized")
    assert (
        json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]["format"] == "pack-quantized"
    )
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "ct", quantization_config=CompressedTensorsConfig(dequantize=True)
    )
    again = LM(model.eval(), AutoTokenizer.from_pretrained(tmp_path / "ct"), lm.arch)
    for name, _ in lm.linear_layers():
        assert torch.equal(again.weight(name), lm.weight(name)), name


def test_cli_exports_a_run_by_replaying_it(tmp_path):
    from lmcompose_cli.main import app
    from typer.testing import CliRunner

    base = tiny_model("llama")
    base.save(tmp_path / "base")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "run",
            str(tmp_path / "base"),
            "gptq:bits=4,group_size=32,n_samples=4,seqlen=32",
            "--metrics",
            "avg_bits",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["export", str(tmp_path / "run"), "--format", "compressed-tensors", "--out", str(tmp_path / "ct")]
    )
    assert res.exit_code == 0, res.output
    again = reload(tmp_path / "ct")
    expected = tiny_model("llama")
    build_intervention(parse_step("gptq:bits=4,group_size=32,n_samples=4,seqlen=32")).apply(expected, Context())
    for name, _ in expected.linear_layers():
        assert torch.equal(again.weight(name), expected.weight(name)), name
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "ct")])
    assert res.exit_code == 2 and "exists and is not empty" in res.output and "--overwrite" in res.output
    assert (tmp_path / "ct" / "config.json").exists()  # nothing lost
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "ct"), "--overwrite"])
    assert res.exit_code == 0, res.output


def test_cli_exports_a_saved_cell_of_a_sweep(tmp_path):
    """--save-cells then export: the sweep's saved folder is exported without a replay."""
    from lmcompose_cli.main import app
    from typer.testing import CliRunner

    tiny_model("llama").save(tmp_path / "base")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "sweep",
            str(tmp_path / "base"),
            "magnitude",
            "rtn:group_size=32,symmetric=true",
            "--vary",
            "rtn.bits=8,4",
            "--orders",
            "magnitude,rtn",
            "--metrics",
            "perplexity",
            "--out",
            str(tmp_path / "sw"),
            "--save-cells",
            "*|4|*",
            "--no-plots",
        ],
    )
    assert res.exit_code == 0, res.output
    saved = tmp_path / "sw" / "models" / "magnitude-rtn__4__r0"
    assert sorted(p.name for p in (tmp_path / "sw" / "models").iterdir()) == [saved.name]
    res = runner.invoke(app, ["export", str(saved), "--out", str(tmp_path / "ct")])
    assert res.exit_code == 0, res.output
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "pack-quantized" and qc["sparsity_config"]["sparsity_structure"] == "unstructured"
    plain = reload(tmp_path / "ct")
    from lmcompose.models.loading import load_model

    lm = load_model(str(saved))
    for name, _ in lm.linear_layers():
        assert torch.equal(plain.weight(name), lm.weight(name)), name


def test_clear_errors(tmp_path):
    from lmcompose.export import ExportError, export, export_compressed_tensors

    lm = tiny_model("llama")
    with pytest.raises(ExportError, match="nothing to export: the model has no quantized or pruned layer"):
        export_compressed_tensors(lm, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    build_intervention(parse_step("rtn:bits=4,group_size=48")).apply(lm, ctx())
    with pytest.raises(ExportError, match="group size 48 does not divide its width"):
        export_compressed_tensors(lm, tmp_path / "b")
    lm = tiny_model("llama")
    build_intervention(parse_step("rtn:bits=4,group_size=32")).apply(lm, ctx())
    with torch.no_grad():
        lm.weight("model.layers.0.mlp.down_proj").add_(0.001)
    with pytest.raises(ExportError, match="no longer on the 4-bit grid"):
        export_compressed_tensors(lm, tmp_path / "c")
    lm = tiny_model("llama")
    build_intervention(parse_step("magnitude:sparsity=0.5")).apply(lm, ctx())
    with torch.no_grad():
        lm.weight("model.layers.0.mlp.down_proj").add_(0.001)
    with pytest.raises(ExportError, match="weights a pruner zeroed are no longer zero"):
        export_compressed_tensors(lm, tmp_path / "c2")
    assert not any(p.name.startswith((".tmp", "c")) for p in tmp_path.iterdir())
    with pytest.raises(UsageError, match="is not one of compressed-tensors"):
        export(tmp_path, tmp_path / "d", fmt="gguf")
    with pytest.raises(
        UsageError, match="--quantization-format 'int4' is not one of auto, pack-quantized, int-quantized"
    ):
        export(tmp_path, tmp_path / "d", quantization_format="int4")
    with pytest.raises(ExportError, match="neither a run folder"):
        export(tmp_path, tmp_path / "e")


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    import sys

    from lmcompose.export import ExportError, export_compressed_tensors

    monkeypatch.setitem(sys.modules, "compressed_tensors", None)
    with pytest.raises(ExportError, match=r"pip install \"lmcompose-cli\[export\]\""):
        export_compressed_tensors(tiny_model("llama"), tmp_path)
