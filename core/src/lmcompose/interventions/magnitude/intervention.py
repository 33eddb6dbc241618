"""The magnitude-pruning step (its algorithm: algorithm.py; its fields: config.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcompose.api import Context, Intervention, StepReport, StrengthKnob
from lmcompose.interventions.common import Timer, selected_layers
from lmcompose.interventions.magnitude.config import MagnitudeConfig

if TYPE_CHECKING:
    import torch

    from lmcompose.models.handle import LM


class Magnitude(Intervention):
    """Magnitude pruning (unstructured or N:M).

    Lifecycle: ``apply`` zeroes the smallest-|w| weights of each targeted projection (one at
    a time; onloaded on an offloaded model), keeps each keep mask (``self.masks``, and in
    ``lm.compression`` for the metrics and export) and reports the sparsity reached;
    ``project`` re-zeros the masked weights after a later step moved them. Sample config::

        magnitude:sparsity=0.5            # unstructured, 50% of every projection
        magnitude:structure=2:4           # N:M, two of every four inputs kept
        {magnitude: {sparsity: 0.3, targets: [mlp], ignore: [model.layers.0]}}
    """

    name = "magnitude"
    kind = "prune"
    Config = MagnitudeConfig
    config: MagnitudeConfig
    strength = StrengthKnob("sparsity", 0.0, 1.0, high_inclusive=False)

    def __init__(self, config: object = None):
        super().__init__(config)
        self.masks: dict[str, torch.Tensor] = {}

    def apply(self, lm: LM, ctx: Context) -> StepReport:
        from lmcompose.interventions.magnitude.algorithm import prune_layer

        layers = selected_layers(lm, self.config, self.name)
        per_layer = {}
        with Timer() as t, ctx.progress.task("magnitude pruning", len(layers)) as advance:
            for name, _module in layers:
                with lm.onloaded(name):  # one layer's weights at a time on an offloaded model
                    keep = prune_layer(lm.weight(name), self.config, where=name)
                self.masks[name] = keep
                lm.record_keep_mask(name, keep)
                per_layer[name] = 1.0 - float(keep.float().mean())
                advance(1)
        total = sum(self.masks[n].numel() for n, _ in layers)
        zeroed = sum(int((~self.masks[n]).sum()) for n, _ in layers)
        rep = self.report(sparsity=zeroed / total, layers=len(layers), per_layer_sparsity=per_layer)
        rep.elapsed_s = t.elapsed
        return rep

    def project(self, lm: LM) -> None:
        lm.rezero(self.masks)
