"""{{name}}: add seeded Gaussian noise to the decoder projections.

Noise of std ``scale * std(W)`` is added to every nonzero weight of each targeted matrix.
Its constraint is that weights that were exactly zero stay zero (so it composes with
pruning); ``project()`` re-zeros them after later steps.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from lmcompose import Context, Intervention, StepReport, StrengthKnob
from lmcompose.errors import ConfigError

from {{module}}.config import {{Class}}Config

if TYPE_CHECKING:  # types only: importing the plugin must not import torch
    import torch

    from lmcompose import LM


class {{Class}}(Intervention[{{Class}}Config]):
    """Add Gaussian noise (std = scale x weight std) to nonzero decoder weights."""

    name = "{{name}}"
    kind = "noise"
    Config = {{Class}}Config
    strength = StrengthKnob("scale", 0.0, 1.0)

    def __init__(self, config: {{Class}}Config | None = None):
        super().__init__(config)
        self.zero_masks: dict[str, torch.Tensor] = {}

    def apply(self, lm: LM, ctx: Context) -> StepReport:
        import torch  # inside apply: importing the plugin must not import torch

        start = time.perf_counter()
        layers = lm.target_layers(self.config.targets, self.config.ignore)
        if not layers:
            raise ConfigError(f"step {self.name!r}: targets/ignore select no projection")
        gen = torch.Generator().manual_seed(ctx.seed)
        with torch.no_grad():
            for name, _module in layers:
                w = lm.weight(name)
                zero = w == 0
                noise = torch.randn(w.shape, generator=gen) * (self.config.scale * float(w.float().std()))
                w.add_(noise.to(w.dtype).to(w.device))
                w.masked_fill_(zero, 0)
                self.zero_masks[name] = zero
        report = self.report(layers=len(layers))
        report.elapsed_s = time.perf_counter() - start
        return report

    def project(self, lm: LM) -> None:
        for name, zero in self.zero_masks.items():
            lm.weight(name).masked_fill_(zero, 0)
