"""The gptq intervention: GPTQ on the core's layer-sequential pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from lmcompose.interventions.calibrated import LayerwiseQuantizer, groups_sharing_stats

from lmcompose_gptq.config import GPTQConfig

if TYPE_CHECKING:  # pragma: no cover - the statistics import torch; validating a config must not
    import torch
    from lmcompose import LM
    from lmcompose.quant import QuantGrid

    from lmcompose_gptq.algorithm import HessianStats


class GPTQ(LayerwiseQuantizer["HessianStats"]):
    """GPTQ: Hessian-aware rounding onto rtn's grid.

    Lifecycle: ``apply`` runs the layer-sequential pipeline (optionally true-sequential, one
    group of projections after another): for each decoder layer it accumulates each
    projection's Hessian, quantizes column by column spreading the rounding error
    (``algorithm.gptq_quantize_result``; round-to-nearest where the Hessian stays singular,
    counted in the report), and stores the grids (``lm.compression``); ``project`` snaps
    weights a later step moved back onto them. Sample config::

        gptq:bits=4,group_size=128
        gptq:bits=3,group_size=64,act_order=true,true_sequential=true,symmetric=true
    """

    name = "gptq"
    Config = GPTQConfig
    config: GPTQConfig

    def __init__(self, config: object = None):
        super().__init__(config)
        self.fallbacks: list[str] = []

    def new_stats(self, name: str, module: torch.nn.Module, in_features: int) -> HessianStats:
        from lmcompose_gptq.algorithm import HessianStats

        return HessianStats(in_features, cast("torch.Tensor", module.weight).device)

    def observe(self, stats: HessianStats, x: torch.Tensor) -> None:
        stats.add(x)

    def quantize_layer(
        self, lm: LM, index: int, names: list[str], stats_of: Callable[[str], HessianStats], messages: list[str]
    ) -> dict[str, QuantGrid]:
        """Projections fed one tensor (q/k/v, gate/up) share H, and GPTQ treats every row
        alone given H: their weights are stacked row-wise and quantized in one sweep (one
        Cholesky, one column loop), which gives each row exactly what a sweep of its own
        matrix gives."""
        import torch
        from lmcompose.quant import QuantGrid

        from lmcompose_gptq.algorithm import gptq_quantize_result

        c = self.config
        grids: dict[str, QuantGrid] = {}
        for group in groups_sharing_stats(names, stats_of):
            weights = [lm.weight(n) for n in group]
            stacked = weights[0] if len(group) == 1 else torch.cat(weights, dim=0)
            result = gptq_quantize_result(
                stacked,
                stats_of(group[0]).hessian(),
                c.bits,
                c.group_size,
                c.symmetric,
                c.act_order,
                c.blocksize,
                c.percdamp,
                messages,
                "+".join(group),
            )
            grid = result.grid
            if result.fell_back:
                self.fallbacks.extend(group)
            start = 0
            for name, w in zip(group, weights, strict=True):
                rows = slice(start, start + w.shape[0])
                if len(group) > 1:
                    w.copy_(stacked[rows])
                grids[name] = QuantGrid(
                    grid.bits, grid.group_size, grid.symmetric, grid.scale[rows].clone(), grid.zero[rows].clone()
                )
                start += w.shape[0]
        return grids

    def details(self) -> dict[str, object]:
        return {"act_order": self.config.act_order, "rtn_fallback_layers": len(self.fallbacks)}
