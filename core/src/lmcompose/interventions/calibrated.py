"""Base classes for compressors that calibrate layer by layer.

:class:`LayerwiseCalibrated` runs the core's layer-sequential pipeline over the selected
projections and gathers one statistics object per distinct input tensor (projections fed
the very same tensor, such as q/k/v after one norm, share it). Two specialisations:

* :class:`LayerwisePruner` (SparseGPT, Wanda): subclasses implement ``new_stats``,
  ``observe`` and ``prune_weight``; keep-masks are recorded (in the model's compression
  state and for ``project()``) and achieved sparsity is reported per layer.
* :class:`LayerwiseQuantizer` (GPTQ, AWQ): subclasses implement ``new_stats``, ``observe``
  and ``quantize_layer`` (all projections of one decoder layer at once, so a method can
  move scales between them); the grids are recorded (``lm.layer_state(name).quant``) so
  ``project()`` snaps later changes back and ``avg_bits`` counts them.

Two optional config fields change the pipeline: ``true_sequential`` (a layer's projections
calibrated group by group in forward order, each on inputs through the groups already
changed) and ``calibrate_next_on`` (``"full"``: the next layer's statistics come from this
layer's unchanged outputs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from lmcompose.api import Context, Intervention, StepReport, StrengthKnob
from lmcompose.interventions.common import selected_layers

if TYPE_CHECKING:
    import torch

    from lmcompose.models.handle import LM
    from lmcompose.quant import QuantGrid

#: a method's statistics of one projection's calibration inputs (a Gram matrix, input norms)
S = TypeVar("S")

__all__ = [
    "LayerwiseCalibrated",
    "LayerwisePruner",
    "LayerwiseQuantizer",
    "bits_field",
    "group_size_field",
    "groups_sharing_stats",
    "symmetric_field",
]


class LayerwiseCalibrated(Intervention, Generic[S]):
    """Run the layer-sequential pipeline; subclasses change each layer in ``process_layer``
    (``S``: the type of their statistics, what ``new_stats`` makes)."""

    def new_stats(self, name: str, module: torch.nn.Module, in_features: int) -> S:  # pragma: no cover
        raise NotImplementedError

    def observe(self, stats: S, x: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def process_layer(
        self, lm: LM, index: int, names: list[str], stats_of: Callable[[str], S], messages: list[str]
    ) -> None:  # pragma: no cover
        """Change the projections ``names`` of decoder layer ``index``; ``stats_of(name)`` gives
        the statistics of a projection's inputs (shared between projections fed one tensor)."""
        raise NotImplementedError

    def calibrate(
        self, lm: LM, ctx: Context, layers: list[tuple[str, torch.nn.Module]], description: str
    ) -> tuple[torch.Tensor, list[str]]:
        """Run the pipeline over ``layers``; return the calibration windows and the messages."""
        from lmcompose.calibration import (
            layer_module_names,
            run_layer_sequential,
            true_sequential_stages,
        )

        windows = ctx.calibration_batches(lm, self.config.n_samples, self.config.seqlen)
        stats: dict[str, S] = {}
        owner: dict[str, str] = {}  # projections fed the very same tensor share statistics
        previous: list[tuple[str, torch.Tensor]] = []  # the last input seen, and whose it was
        messages: list[str] = []
        names_of = layer_module_names(lm, layers)

        def observe(_i: int, name: str, x: torch.Tensor) -> None:
            if name not in owner:
                prev = previous[0] if previous else None
                # `previous` keeps the last input alive, so an equal pointer means the same storage
                if (
                    prev is not None
                    and x.data_ptr() == prev[1].data_ptr()
                    and x.shape == prev[1].shape
                    and x.stride() == prev[1].stride()
                ):
                    owner[name] = owner[prev[0]]
                else:
                    owner[name] = name
                    stats[name] = self.new_stats(name, lm.model.get_submodule(name), x.shape[-1])
            previous[:] = [(name, x)]
            if owner[name] == name:
                self.observe(stats[name], x)

        def modify(i: int, names: list[str]) -> None:
            previous.clear()
            if names:
                self.process_layer(lm, i, names, lambda n: stats[owner[n]], messages)
            for name in names:
                stats.pop(name, None)

        stages = true_sequential_stages(lm) if getattr(self.config, "true_sequential", False) else None
        next_inputs = "original" if getattr(self.config, "calibrate_next_on", "quantized") == "full" else "modified"
        run_layer_sequential(
            lm, windows, names_of, observe, modify, ctx.progress, description, stages=stages, next_inputs=next_inputs
        )
        for m in messages:
            ctx.note(m)
        return windows, messages


class LayerwisePruner(LayerwiseCalibrated[S]):
    """Prune each selected projection from statistics of its calibration inputs."""

    kind = "prune"
    strength = StrengthKnob("sparsity", 0.0, 1.0, high_inclusive=False)

    def __init__(self, config: object = None):
        super().__init__(config)
        self.masks: dict[str, torch.Tensor] = {}
        self._per_layer: dict[str, float] = {}

    def prune_weight(
        self, name: str, w: torch.Tensor, stats: S, messages: list[str]
    ) -> torch.Tensor:  # pragma: no cover
        """Prune ``w`` (out, in; a view into the model) in place; return the keep mask."""
        raise NotImplementedError

    def process_layer(
        self, lm: LM, index: int, names: list[str], stats_of: Callable[[str], S], messages: list[str]
    ) -> None:
        for name in names:
            self.record_mask(lm, name, self.prune_weight(name, lm.weight(name), stats_of(name), messages))

    def record_mask(self, lm: LM, name: str, keep: torch.Tensor) -> None:
        """Keep ``keep`` (True = kept) as ``name``'s mask for project() and the report."""
        self.masks[name] = keep
        lm.record_keep_mask(name, keep)
        self._per_layer[name] = 1.0 - float(keep.float().mean())

    def apply(self, lm: LM, ctx: Context) -> StepReport:
        start = time.perf_counter()
        layers = selected_layers(lm, self.config, self.name)
        self._per_layer = {}
        windows, messages = self.calibrate(lm, ctx, layers, f"{self.name} pruning")
        total = sum(self.masks[n].numel() for n, _ in layers)
        zeroed = sum(int((~self.masks[n]).sum()) for n, _ in layers)
        report = self.report(
            sparsity=zeroed / total,
            layers=len(layers),
            calibration_windows=int(windows.shape[0]),
            calibration_seqlen=int(windows.shape[1]),
            per_layer_sparsity=dict(self._per_layer),
        )
        report.messages = messages
        report.elapsed_s = time.perf_counter() - start
        return report

    def project(self, lm: LM) -> None:
        lm.rezero(self.masks)


class LayerwiseQuantizer(LayerwiseCalibrated[S]):
    """Quantize the selected projections layer by layer from statistics of their inputs.

    Subclasses implement ``quantize_layer``: change the weights of one decoder layer's
    projections and return each one's :class:`~lmcompose.quant.QuantGrid` (the weights must
    lie on it). The config needs ``bits``, ``group_size``, ``symmetric``, ``n_samples``,
    ``seqlen``, ``targets`` and ``ignore``.
    """

    kind = "quantize"
    strength = StrengthKnob("bits", 2, 8, increasing=False, integer=True)

    def __init__(self, config: object = None):
        super().__init__(config)
        self.grids: dict[str, QuantGrid] = {}

    def quantize_layer(
        self, lm: LM, index: int, names: list[str], stats_of: Callable[[str], S], messages: list[str]
    ) -> dict[str, QuantGrid]:  # pragma: no cover
        raise NotImplementedError

    def process_layer(
        self, lm: LM, index: int, names: list[str], stats_of: Callable[[str], S], messages: list[str]
    ) -> None:
        for name, grid in self.quantize_layer(lm, index, names, stats_of, messages).items():
            self.grids[name] = grid
            lm.layer_state(name).quant = grid

    def details(self) -> dict[str, object]:
        """Method-specific report fields (beside bits, group size, layers, calibration)."""
        return {}

    def apply(self, lm: LM, ctx: Context) -> StepReport:
        start = time.perf_counter()
        layers = selected_layers(lm, self.config, self.name)
        windows, messages = self.calibrate(lm, ctx, layers, f"{self.name} {self.config.bits}-bit")
        report = self.report(
            bits=self.config.bits,
            group_size=self.config.group_size,
            symmetric=self.config.symmetric,
            layers=len(layers),
            calibration_windows=int(windows.shape[0]),
            calibration_seqlen=int(windows.shape[1]),
            **self.details(),
        )
        report.messages = messages
        report.elapsed_s = time.perf_counter() - start
        return report

    def project(self, lm: LM) -> None:
        for name, grid in self.grids.items():
            with lm.onloaded(name):
                grid.snap_(lm.weight(name))


# -- config fields shared by the layer-wise quantizers (same meaning as rtn's) ------------
def groups_sharing_stats(names: list[str], stats_of: Callable[[str], object]) -> list[list[str]]:
    """``names`` grouped by their statistics object, in order: projections fed the same
    tensor (q/k/v, gate/up) share one, so a solver that treats rows alone given H can stack
    a group into one sweep (GPTQ, SparseGPT)."""
    shared: dict[int, list[str]] = {}
    for name in names:
        shared.setdefault(id(stats_of(name)), []).append(name)
    return list(shared.values())


def bits_field(default: int = 4) -> int:
    from dataclasses import field

    return field(default=default, metadata={"help": "bits per weight, 2 to 8"})


def group_size_field(default: int = 128) -> int:
    from dataclasses import field

    return field(
        default=default,
        metadata={
            "help": "input columns sharing one scale/zero; <= 0 means one group per row; a shorter last group when "
            "it does not divide the width"
        },
    )


def symmetric_field(default: bool = False) -> bool:
    from dataclasses import field

    return field(
        default=default, metadata={"help": "symmetric grid around 0 (zero point fixed at 2^bits/2) instead of min/max"}
    )
