"""Round-to-nearest (RTN) weight quantization on the shared GPTQ grid.

Each targeted matrix is split into groups of ``group_size`` input columns; each (row,
group) gets a min/max (or symmetric) scale and zero point, and every weight is rounded to
the nearest grid point. Weights keep the dequantized float values; the grid is stored in
the model's compression state so project() can snap later changes back onto it.
"""

from __future__ import annotations

from typing import Any

from lmcompose.api import Context, Intervention, StepReport, StrengthKnob
from lmcompose.interventions.common import Timer, selected_layers
from lmcompose.interventions.rtn.config import RTNConfig


class RTN(Intervention):
    """Round-to-nearest weight quantization; project() snaps weights back onto the grid."""

    name = "rtn"
    kind = "quantize"
    Config = RTNConfig
    strength = StrengthKnob("bits", 2, 8, increasing=False, integer=True)

    def __init__(self, config: Any = None):
        super().__init__(config)
        self.grids: dict[str, Any] = {}

    def apply(self, lm: Any, ctx: Context) -> StepReport:
        from lmcompose.quant import QuantGrid

        layers = selected_layers(lm, self.config, self.name)
        c = self.config
        with Timer() as t, ctx.progress.task(f"rtn {c.bits}-bit", len(layers)) as advance:
            for name, _module in layers:
                with lm.onloaded(name):  # one layer's weights at a time on an offloaded model
                    w = lm.weight(name)
                    grid = QuantGrid.fit(w.float(), c.bits, c.group_size, c.symmetric)
                    grid.snap_(w)
                self.grids[name] = grid
                lm.layer_state(name).quant = grid
                advance(1)
        rep = self.report(bits=c.bits, group_size=c.group_size, layers=len(layers))
        rep.elapsed_s = t.elapsed
        return rep

    def project(self, lm: Any) -> None:
        for name, grid in self.grids.items():
            with lm.onloaded(name):
                grid.snap_(lm.weight(name))
