"""Run llm-compressor's GPTQ/AWQ one-shot on a model folder with given calibration windows;
save the fake-quantized (dequantized) model as a plain transformers folder and print
{"elapsed_s"} as JSON. Runs inside the separate benchmark venv (see
benchmarks/quantization.py); not part of lmcompose.

    _llmc_quantize.py FOLDER WINDOWS.pt gptq|awq BITS GROUP SYMMETRIC(0|1) ACTORDER(0|1) DTYPE OUT
"""

import json
import sys
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    folder, windows_path, method, bits, group, symmetric, actorder, dtype, out = sys.argv[1:10]
    dtype = getattr(torch, dtype)
    windows = torch.load(windows_path, weights_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(folder)
    ds = Dataset.from_dict({"input_ids": windows.tolist(), "attention_mask": torch.ones_like(windows).tolist()})
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from llmcompressor import oneshot
    from llmcompressor.pipelines.cache import IntermediatesCache

    # AWQ pins its cached activations for host-to-device copies; pinning needs an accelerator
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None

    weights = {
        "num_bits": int(bits),
        "type": "int",
        "symmetric": symmetric == "1",
        "strategy": "group",
        "group_size": int(group),
    }
    quant = {"config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}}, "ignore": ["lm_head"]}
    if method == "gptq":
        from llmcompressor.modifiers.gptq import GPTQModifier

        recipe = [
            GPTQModifier(**quant, block_size=128, dampening_frac=0.01, actorder="static" if actorder == "1" else None)
        ]
    else:
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform.awq import AWQModifier

        recipe = [AWQModifier(duo_scaling=True, n_grid=20), QuantizationModifier(**quant)]
    start = time.perf_counter()
    oneshot(
        model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(windows), max_seq_length=windows.shape[1]
    )
    elapsed = time.perf_counter() - start

    # a plain copy of the model holding the dequantized weights (and AWQ's folded norms)
    state = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            scheme = getattr(module, "quantization_scheme", None)
            if scheme is not None and scheme.weights is not None and hasattr(module, "weight_scale"):
                zp = getattr(module, "weight_zero_point", None)
                state[f"{name}.weight"] = (
                    fake_quantize(module.weight, module.weight_scale, zp, scheme.weights).detach().clone()
                )
        plain = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        own = plain.state_dict()
        for key, value in model.state_dict().items():
            if key in own and key not in state:
                state[key] = value.detach().clone()
        plain.load_state_dict(state, strict=False)
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    print(json.dumps({"elapsed_s": elapsed}))


if __name__ == "__main__":
    main()
