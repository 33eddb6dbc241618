"""The awq intervention: AWQ on the core's layer-sequential pipeline.

For each decoder layer, after its calibration pass: search a scale for every foldable group
(lmcompose_awq.folding) on the statistics of the unmodified layer's inputs, fold the scales
(the layer computes the same function), then for every selected projection search the
clipping range on its (scaled) weights (``clip_qk=false`` skips the query/key projections,
as the reference does) and round them onto the resulting grid. The next layer is
calibrated on the outputs of this quantized layer, or (``calibrate_next_on=full``) on its
full-precision outputs, as the reference computes them before it quantizes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from lmcompose.interventions.calibrated import LayerwiseQuantizer

from lmcompose_awq.config import AWQConfig

if TYPE_CHECKING:
    import torch
    from lmcompose import LM
    from lmcompose.quant import QuantGrid

    from lmcompose_awq.algorithm import ActStats


def query_key_projections(lm: LM, index: int) -> set[str]:
    """The projections of decoder layer ``index`` whose outputs enter q·kᵀ: every attention
    input but the value projection (a fused q/k/v matrix included)."""
    arch = lm.arch
    return {f"{arch.layers}.{index}.{s}" for s in arch.attn_in if s != arch.attn_v}


class AWQ(LayerwiseQuantizer["ActStats"]):
    """AWQ: activation-aware scales folded into the preceding op, clip search, rtn's grid.

    Lifecycle: ``apply`` runs the layer-sequential pipeline: for each decoder layer it
    measures each projection's input activations, searches the per-channel scale of each
    group sharing an input and folds it into the op before (a norm, or v into o), searches
    each projection's clipping range, quantizes onto rtn's grid and stores it
    (``lm.compression``); ``project`` snaps weights back onto the grid (``recompress`` re-runs
    the quantizer without refolding). Sample config::

        awq:bits=4,group_size=128
        awq:bits=3,group_size=64,clip_qk=false,calibrate_next_on=full
    """

    name = "awq"
    Config = AWQConfig
    config: AWQConfig

    def __init__(self, config: object = None):
        super().__init__(config)
        self.scaled_groups: dict[str, float | None] = {}  # "<source> -> <member>": best alpha (None: s = 1)

    def reruns_on_recompress(self) -> bool:
        return self.config.recompress

    def new_stats(self, name: str, module: torch.nn.Module, in_features: int) -> ActStats:
        from lmcompose_awq.algorithm import ActStats

        return ActStats(in_features, cast("torch.Tensor", module.weight).device)

    def observe(self, stats: ActStats, x: torch.Tensor) -> None:
        stats.add(x)

    def quantize_layer(
        self, lm: LM, index: int, names: list[str], stats_of: Callable[[str], ActStats], messages: list[str]
    ) -> dict[str, QuantGrid]:
        from lmcompose_awq.algorithm import clipped_grid, search_scale
        from lmcompose_awq.folding import fold_scales, scale_groups

        c = self.config
        # second moments of each projection's input, in the coordinates of the current weights
        moments: dict[str, torch.Tensor] = {}
        shared: dict[int, torch.Tensor] = {}
        for name in names:
            st = stats_of(name)
            moments[name] = shared.setdefault(id(st), st.second_moment())
        if c.scale_search:
            groups, skipped = scale_groups(lm, index, set(names))
            for why in skipped:
                note = f"awq: no scale folding for {why} (scale kept at 1; exact)"
                if note not in messages:
                    messages.append(note)
            scales = []
            for grp in groups:
                st = stats_of(grp.members[0])
                s, alpha, _, _ = search_scale(
                    [lm.weight(n) for n in grp.members],
                    moments[grp.members[0]],
                    st.mean_abs(),
                    c.bits,
                    c.group_size,
                    c.symmetric,
                    c.n_grid,
                )
                self.scaled_groups[f"{grp.source} -> {grp.members[0]}"] = alpha
                scales.append((grp, s))
            for grp, s in scales:
                fold_scales(lm, grp, s)
                inv = 1.0 / s
                h = moments[grp.members[0]] * inv.unsqueeze(0) * inv.unsqueeze(1)  # inputs are now x / s
                for n in grp.members:
                    moments[n] = h
        from lmcompose.quant import QuantGrid

        grids: dict[str, QuantGrid] = {}
        query_key = query_key_projections(lm, index)
        for name in names:
            w = lm.weight(name)
            if c.clip_search and (c.clip_qk or name not in query_key):
                grid = clipped_grid(w, moments[name], c.bits, c.group_size, c.symmetric, c.n_grid, c.max_shrink)
            else:
                grid = QuantGrid.fit(w.float(), c.bits, c.group_size, c.symmetric)
            grid.snap_(w)
            grids[name] = grid
        return grids

    def details(self) -> dict[str, object]:
        alphas = [a for a in self.scaled_groups.values() if a is not None]
        return {
            "scaled_groups": len(alphas),
            "unscaled_groups": len(self.scaled_groups) - len(alphas),
            "mean_alpha": sum(alphas) / len(alphas) if alphas else None,
        }
