"""AlphaEdit hyperparameters per model, and the rule for a model without a preset.

Published presets (the AlphaEdit repository's hparams/AlphaEdit/*.json): GPT-J-6B layers
3-8, GPT2-XL 13-17, Llama3-8B 4-8; all with null-space threshold 2e-2 and L2 = 10; v* as
MEMIT's (Llama3: v_lr 0.1). SmolLM2-135M and Gemma-3-270M take MEMIT's layers and v*
settings and the threshold and L2 chosen in docs/alphaedit.md.

Rule for any other model: MEMIT's rule for the layers and v*, L2 = 10, and a threshold equal
to the mean eigenvalue of the key covariance (its trace over d; ``RELATIVE_THRESHOLD``): the
reference's 2e-2 is an absolute value, and the spectrum's scale differs from model to model
(on SmolLM2-135M's edit layers 2e-2 is 0.8-1.6 times the mean eigenvalue).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmcompose.editing import LLAMA_LIKE, Preset, match_preset, rule_layers

if TYPE_CHECKING:
    from lmcompose import LM

__all__ = ["PRESETS", "RELATIVE_THRESHOLD", "preset_for", "rule_preset"]

GPTJ_V = {"v_num_grad_steps": 25, "v_lr": 0.5, "v_weight_decay": 0.5, "clamp_norm_factor": 0.75, "kl_factor": 0.0625}
LLAMA_V = {"v_num_grad_steps": 25, "v_lr": 0.5, "v_weight_decay": 1e-3, "clamp_norm_factor": 4.0, "kl_factor": 0.0625}
REFERENCE = {"nullspace_threshold": 2e-2, "l2": 10.0}

#: the rule's threshold, as a fraction of the mean eigenvalue of the key covariance
RELATIVE_THRESHOLD = 1.0

PRESETS: tuple[Preset, ...] = (
    Preset("gpt-j-6b", "gptj", 28, 4096, {"layers": [3, 4, 5, 6, 7, 8], **GPTJ_V, **REFERENCE}),
    Preset("gpt2-xl", "gpt2", 48, 1600, {"layers": [13, 14, 15, 16, 17], **GPTJ_V, **REFERENCE}),
    Preset("llama3-8b", "llama", 32, 4096, {"layers": [4, 5, 6, 7, 8], **GPTJ_V, "v_lr": 0.1, **REFERENCE}),
    # docs/alphaedit.md
    Preset(
        "smollm2-135m",
        "llama",
        30,
        576,
        {"layers": [3, 4, 5, 6, 7], **LLAMA_V, "nullspace_threshold": 2e-2, "l2": 10.0},
    ),
    Preset(
        "gemma-3-270m",
        "gemma3_text",
        18,
        640,
        {
            "layers": [2, 3, 4, 5, 6],
            **LLAMA_V,
            "v_lr": 50.0,
            "clamp_norm_factor": 0.3,
            "nullspace_threshold": 2e-2,
            "l2": 10.0,
        },
    ),
)


def rule_preset(num_layers: int, model_type: str, d_ff: int) -> dict[str, Any]:
    """No ``nullspace_threshold``: the intervention derives it from the covariance."""
    v = LLAMA_V if model_type in LLAMA_LIKE else GPTJ_V
    return {"layers": rule_layers(num_layers), **v, "l2": 10.0}


def preset_for(lm: LM) -> tuple[str, dict[str, Any]]:
    """(where the values come from, the values) for this model."""
    return match_preset(lm, PRESETS, rule_preset)
