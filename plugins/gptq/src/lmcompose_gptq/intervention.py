"""The gptq intervention: GPTQ on the core's layer-sequential pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmcompose.calibration import Gram
from lmcompose.interventions.calibrated import LayerwiseQuantizer

from lmcompose_gptq.config import GPTQConfig


class HessianStats(Gram):
    """Σ xxᵀ and the token count; ``hessian()`` is GPTQ's H = 2XXᵀ/n."""

    def hessian(self) -> Any:
        return self.xxt * (2.0 / max(self.tokens, 1))


class GPTQ(LayerwiseQuantizer):
    """GPTQ: Hessian-aware rounding onto rtn's grid; project() snaps weights back onto it."""

    name = "gptq"
    Config = GPTQConfig

    def __init__(self, config: Any = None):
        super().__init__(config)
        self.fallbacks: list[str] = []

    def new_stats(self, name: str, module: Any, in_features: int) -> HessianStats:
        return HessianStats(in_features, module.weight.device)

    def observe(self, stats: HessianStats, x: Any) -> None:
        stats.add(x)

    def quantize_layer(self, lm: Any, index: int, names: list[str], stats_of: Callable[[str], Any], messages: list[str]) -> dict[str, Any]:
        from lmcompose_gptq.algorithm import gptq_quantize

        c = self.config
        grids = {}
        hessians: dict[int, Any] = {}  # projections sharing statistics share H too
        for name in names:
            stats = stats_of(name)
            h = hessians.setdefault(id(stats), stats.hessian())
            before = len(messages)
            grids[name] = gptq_quantize(lm.weight(name), h, c.bits, c.group_size, c.symmetric, c.act_order,
                                        c.blocksize, c.percdamp, messages, name)
            if any("round-to-nearest" in m for m in messages[before:]):
                self.fallbacks.append(name)
        return grids

    def details(self) -> dict[str, Any]:
        return {"act_order": self.config.act_order, "rtn_fallback_layers": len(self.fallbacks)}
