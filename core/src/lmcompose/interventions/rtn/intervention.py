"""The round-to-nearest step (its algorithm: algorithm.py; its fields: config.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcompose.api import Context, Intervention, StepReport, StrengthKnob
from lmcompose.interventions.common import Timer, selected_layers
from lmcompose.interventions.rtn.config import RTNConfig

if TYPE_CHECKING:
    from lmcompose.models.handle import LM
    from lmcompose.quant import QuantGrid


class RTN(Intervention):
    """Round-to-nearest weight quantization.

    Lifecycle: ``apply`` fits each targeted projection's grid (per row and group of
    ``group_size`` inputs) and rounds its weights onto it (one projection at a time), storing
    the grid in ``lm.compression`` (average bits, export); ``project`` snaps weights a later
    step moved back onto the stored grid. Sample config::

        rtn:bits=4,group_size=128          # asymmetric min/max grid (default)
        rtn:bits=8,group_size=0,symmetric=true
    """

    name = "rtn"
    kind = "quantize"
    Config = RTNConfig
    config: RTNConfig
    strength = StrengthKnob("bits", 2, 8, increasing=False, integer=True)

    def __init__(self, config: object = None):
        super().__init__(config)
        self.grids: dict[str, QuantGrid] = {}

    def apply(self, lm: LM, ctx: Context) -> StepReport:
        from lmcompose.interventions.rtn.algorithm import round_to_nearest

        layers = selected_layers(lm, self.config, self.name)
        c = self.config
        with Timer() as t, ctx.progress.task(f"rtn {c.bits}-bit", len(layers)) as advance:
            for name, _module in layers:
                with lm.onloaded(name):  # one layer's weights at a time on an offloaded model
                    grid = round_to_nearest(lm.weight(name), c.bits, c.group_size, c.symmetric)
                self.grids[name] = grid
                lm.layer_state(name).quant = grid
                advance(1)
        rep = self.report(bits=c.bits, group_size=c.group_size, layers=len(layers))
        rep.elapsed_s = t.elapsed
        return rep

    def project(self, lm: LM) -> None:
        for name, grid in self.grids.items():
            with lm.onloaded(name):
                grid.snap_(lm.weight(name))
