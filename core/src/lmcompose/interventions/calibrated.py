"""A base class for pruners that calibrate layer by layer (SparseGPT, Wanda).

Subclasses implement ``new_stats``, ``observe`` and ``prune_weight``; this class runs the
core's layer-sequential pipeline over the selected projections, records the keep-masks (in
the model's compression state and for ``project()``), and reports achieved sparsity per
layer.
"""

from __future__ import annotations

import time
from typing import Any

from lmcompose.api import Context, Intervention, StepReport, StrengthKnob
from lmcompose.interventions.common import selected_layers


class LayerwisePruner(Intervention):
    """Prune each selected projection from statistics of its calibration inputs."""

    kind = "prune"
    strength = StrengthKnob("sparsity", 0.0, 1.0, high_inclusive=False)

    def __init__(self, config: Any = None):
        super().__init__(config)
        self.masks: dict[str, Any] = {}

    # -- for subclasses ----------------------------------------------------------------
    def new_stats(self, name: str, module: Any, in_features: int) -> Any:  # pragma: no cover
        raise NotImplementedError

    def observe(self, stats: Any, x: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    def prune_weight(self, name: str, w: Any, stats: Any, messages: list[str]) -> Any:  # pragma: no cover
        """Prune ``w`` (out, in; a view into the model) in place; return the keep mask."""
        raise NotImplementedError

    # -- the pipeline ------------------------------------------------------------------
    def apply(self, lm: Any, ctx: Context) -> StepReport:
        from lmcompose.calibration import layer_module_names, run_layer_sequential

        start = time.perf_counter()
        layers = selected_layers(lm, self.config, self.name)
        windows = ctx.calibration_batches(lm, self.config.n_samples, self.config.seqlen)
        stats: dict[str, Any] = {}
        owner: dict[str, str] = {}  # projections fed the very same tensor share statistics
        previous: dict[str, Any] = {}
        per_layer: dict[str, float] = {}
        messages: list[str] = []
        names_of = layer_module_names(lm, layers)

        def observe(_i: int, name: str, x: Any) -> None:
            if name not in owner:
                prev = previous.get("x")
                # `previous` keeps the last input alive, so an equal pointer means the same storage
                same = prev is not None and x.data_ptr() == prev.data_ptr() and x.shape == prev.shape and x.stride() == prev.stride()
                owner[name] = owner[previous["name"]] if same else name
                if not same:
                    stats[name] = self.new_stats(name, lm.model.get_submodule(name), x.shape[-1])
            previous["x"], previous["name"] = x, name
            if owner[name] == name:
                self.observe(stats[name], x)

        def modify(i: int) -> None:
            previous.clear()
            for name in names_of(i):
                keep = self.prune_weight(name, lm.weight(name), stats[owner[name]], messages)
                self.masks[name] = keep
                lm.record_keep_mask(name, keep)
                per_layer[name] = 1.0 - float(keep.float().mean())
            for name in names_of(i):
                stats.pop(name, None)

        run_layer_sequential(lm, windows, names_of, observe, modify, ctx.progress, f"{self.name} pruning")
        total = sum(lm.weight(n).numel() for n, _ in layers)
        zeroed = sum(int((~self.masks[n]).sum()) for n, _ in layers)
        report = self.report(sparsity=zeroed / total, layers=len(layers), calibration_windows=int(windows.shape[0]),
                             calibration_seqlen=int(windows.shape[1]), per_layer_sparsity=per_layer)
        report.messages = messages
        for m in messages:
            ctx.note(m)
        report.elapsed_s = time.perf_counter() - start
        return report

    def project(self, lm: Any) -> None:
        lm.rezero(self.masks)
