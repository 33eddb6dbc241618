"""MEMIT hyperparameters per model, and the rule for a model without a preset.

Published presets (the MEMIT repository's hparams/MEMIT/*.json; EasyEdit for Llama-2):
GPT-J-6B edits layers 3-8 of 28, GPT-2 XL 13-17 of 48, Llama-2-7B 4-8 of 32 — early-to-middle
MLP layers, where causal tracing finds subject recall. SmolLM2-135M and Gemma-3-270M were
chosen by the search in benchmarks/memit_search.py (docs/memit.md records it).

Rule for any other model (``rule_preset``): the edit layers of ``lmcompose.editing.rule_layers``
(GPT-J: 3-7, Llama-2-7B: 4-9, a 2-layer model: layer 0), and λ = the MLP width d_ff. λ weighs
E[kkᵀ] against the edits' own keys KKᵀ; for keys of typical size their ratio in a key's
direction is about λ/d_ff, so λ has to grow with the width (GPT-J: d_ff 16384, λ 15000; a tiny
model with d_ff 128 and λ 15000 moves by 1% of what its edits need). The optimisation settings
are GPT-J's, except for llama-like families where EasyEdit's (clamp 4, weight decay 1e-3) are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmcompose.editing import LLAMA_LIKE, Preset, match_preset, rule_layers

if TYPE_CHECKING:
    from lmcompose import LM

__all__ = ["GPTJ_V", "LLAMA_V", "PRESETS", "preset_for", "rule_preset"]

GPTJ_V = {"v_num_grad_steps": 25, "v_lr": 0.5, "v_weight_decay": 0.5, "clamp_norm_factor": 0.75, "kl_factor": 0.0625}
LLAMA_V = {"v_num_grad_steps": 25, "v_lr": 0.5, "v_weight_decay": 1e-3, "clamp_norm_factor": 4.0, "kl_factor": 0.0625}

PRESETS: tuple[Preset, ...] = (
    Preset("gpt-j-6b", "gptj", 28, 4096, {"layers": [3, 4, 5, 6, 7, 8], "mom2_update_weight": 15000.0, **GPTJ_V}),
    Preset("gpt2-xl", "gpt2", 48, 1600, {"layers": [13, 14, 15, 16, 17], "mom2_update_weight": 20000.0, **GPTJ_V}),
    Preset("llama-2-7b", "llama", 32, 4096, {"layers": [4, 5, 6, 7, 8], "mom2_update_weight": 15000.0, **LLAMA_V}),
    # benchmarks/memit_search.py, docs/memit.md
    Preset("smollm2-135m", "llama", 30, 576, {"layers": [3, 4, 5, 6, 7], "mom2_update_weight": 500.0, **LLAMA_V}),
    # Gemma-3's residual is ~4700 long: Adam's per-coordinate step of 0.5 moved v* by 4% of it in
    # 25 steps; v_lr 50 lets v* converge, and clamp 0.3 |h| keeps it within what five layers'
    # normalized MLP outputs can deliver (docs/memit.md)
    Preset(
        "gemma-3-270m",
        "gemma3_text",
        18,
        640,
        {"layers": [2, 3, 4, 5, 6], "mom2_update_weight": 250.0, **LLAMA_V, "v_lr": 50.0, "clamp_norm_factor": 0.3},
    ),
)


def rule_preset(num_layers: int, model_type: str, d_ff: int) -> dict[str, Any]:
    v = LLAMA_V if model_type in LLAMA_LIKE else GPTJ_V
    return {"layers": rule_layers(num_layers), "mom2_update_weight": float(d_ff), **v}


def preset_for(lm: LM) -> tuple[str, dict[str, Any]]:
    """(where the values come from, the values) for this model."""
    return match_preset(lm, PRESETS, rule_preset)
