"""Run llm-compressor's SparseGPT/Wanda one-shot on a model folder with given calibration
windows; print {"elapsed_s", "sparsity"} as JSON. Runs inside the separate benchmark venv
(see benchmarks/pruning.py); not part of lmcompose."""

import json
import sys
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    folder, windows_path, method, structure, out = sys.argv[1:6]
    dtype = getattr(torch, sys.argv[6] if len(sys.argv) > 6 else "float32")
    block_size = int(sys.argv[7]) if len(sys.argv) > 7 else 0  # 0: SparseGPTModifier's default
    windows = torch.load(windows_path, weights_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(folder)
    ds = Dataset.from_dict({"input_ids": windows.tolist(), "attention_mask": torch.ones_like(windows).tolist()})
    from llmcompressor import oneshot
    from llmcompressor.modifiers.obcq import SparseGPTModifier
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    kwargs = {"targets": [r"re:.*layers\.\d+$"], "ignore": ["lm_head", "re:.*lm_head"]}
    if ":" in structure:
        kwargs["sparsity"], kwargs["mask_structure"] = 0.5, structure
    else:
        kwargs["sparsity"] = float(structure)
    if block_size and method == "sparsegpt":
        kwargs["block_size"] = block_size
    modifier = SparseGPTModifier(**kwargs) if method == "sparsegpt" else WandaPruningModifier(**kwargs)
    start = time.perf_counter()
    oneshot(
        model=model,
        dataset=ds,
        recipe=[modifier],
        num_calibration_samples=len(windows),
        max_seq_length=windows.shape[1],
    )
    elapsed = time.perf_counter() - start
    zeros = total = 0
    for name, p in model.named_parameters():
        if name.endswith("proj.weight") and ".layers." in name:
            zeros += int((p == 0).sum())
            total += p.numel()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    print(json.dumps({"elapsed_s": elapsed, "sparsity": zeros / total}))


if __name__ == "__main__":
    main()
