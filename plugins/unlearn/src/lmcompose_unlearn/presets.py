"""Unlearning hyperparameters per model, matched by shape, and the rule for other models.

A preset fills the config fields left at None; a field given in the step always wins.
The rule for a model without a preset is the reference's values: RMU's c = 6.5 and
α = 1200 (the WMDP code's Zephyr-7B run), its layer 7 of Zephyr's 32 scaled to the depth
(round(7 L / 32)); GA and GD one epoch at lr 5e-5 (the ICLR code), NPO ten epochs at 1e-5
(open-unlearning).

SmolLM2-135M's presets come from the measured search recorded in docs/unlearning.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmcompose.editing import Preset, match_preset

if TYPE_CHECKING:
    from lmcompose import LM

__all__ = ["PRESETS", "REFERENCE", "REFERENCE_LAYERS", "preset_for", "rule_preset"]

#: the references' values of the fields a preset may set (GA and GD: the ICLR code's
#: conf/unlearn/{ga,gd}.yaml; NPO: open-unlearning's finetune.yaml)
REFERENCE: dict[str, dict[str, Any]] = {
    "ga": {"epochs": 1, "lr": 5e-5},
    "gd": {"epochs": 1, "lr": 5e-5},
    "npo": {"epochs": 10, "lr": 1e-5},
}
#: Zephyr-7B's decoder layers, the depth the WMDP code's l = 7 belongs to
REFERENCE_LAYERS = 32

#: SmolLM2-135M (llama, 30 layers, width 576): benchmarks/unlearn_search.py, docs/unlearning.md.
#: RMU: layer 5, c = 323 (twice the forget activations' mean norm at layer 7, 161.5), lr 1e-3
#: (the reference's 5e-5 moves the three down projections by a norm of 2-3 in 80 steps and
#: leaves the cloze answers as they were); GA 3 epochs and GD 5 at the reference's lr 5e-5;
#: NPO keeps the reference's values. The search ran RMU for 80 steps (its 32 facts repeated
#: ten times), which an unset ``epochs`` now gives every RMU run (plugin 0.4.0).
SMOLLM2 = ("smollm2-135m", "llama", 30, 576)
PRESETS: dict[str, tuple[Preset, ...]] = {
    "rmu": (Preset(*SMOLLM2, {"layer": 5, "steering_coeff": 323.0, "alpha": 1200.0, "lr": 1e-3}),),
    "ga": (Preset(*SMOLLM2, {"epochs": 3, "lr": 5e-5}),),
    "gd": (Preset(*SMOLLM2, {"epochs": 5, "lr": 5e-5}),),
    "npo": (),
}


def rule_preset(method: str, num_layers: int) -> dict[str, Any]:
    """The reference's values for a model without a preset."""
    if method == "rmu":
        return {
            "layer": min(num_layers - 1, round(7 * num_layers / REFERENCE_LAYERS)),
            "steering_coeff": 6.5,
            "alpha": 1200.0,
            "lr": 5e-5,
        }
    return dict(REFERENCE[method])


def preset_for(method: str, lm: LM) -> tuple[str, dict[str, Any]]:
    """(where the values come from, the values) for ``method`` on this model."""
    return match_preset(lm, PRESETS.get(method, ()), lambda layers, _type, _dff: rule_preset(method, layers))
