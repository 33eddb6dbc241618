"""Wanda (Sun, Liu, Bair, Kolter 2024): score |W_ij| · ‖X_j‖₂, the norm of input feature j
over all calibration tokens; prune the lowest scores of each output row (unstructured:
round(sparsity · in) per row) or the M − N lowest of each group of M (N:M). No weight
update. Runs on the core's layer-sequential pipeline, so layer i's norms are measured on
inputs that already went through the pruned layers before it, as in the reference code."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from lmcompose.interventions.calibrated import LayerwisePruner

from lmcompose_wanda.algorithm import InputNorms, wanda_scores
from lmcompose_wanda.config import WandaConfig

if TYPE_CHECKING:
    import torch


class Wanda(LayerwisePruner[InputNorms]):
    """Wanda: |W| x input norm, per output row.

    Lifecycle: ``apply`` runs the layer-sequential pipeline: for each decoder layer it
    gathers each projection's input norms over the calibration windows, prunes by score and
    keeps the keep masks (``lm.compression``); ``project`` re-zeros the masked weights after
    a later step. Sample config::

        wanda:sparsity=0.5                 # unstructured, per output row
        wanda:structure=2:4,n_samples=128,seqlen=2048
    """

    name = "wanda"
    Config = WandaConfig
    config: WandaConfig

    def new_stats(self, name: str, module: torch.nn.Module, in_features: int) -> InputNorms:
        return InputNorms(in_features, cast("torch.Tensor", module.weight).device)

    def observe(self, stats: InputNorms, x: torch.Tensor) -> None:
        stats.add(x)

    def prune_weight(self, name: str, w: torch.Tensor, stats: InputNorms, messages: list[str]) -> torch.Tensor:
        from lmcompose.sparsity import keep_lowest_pruned_per_row, keep_n_of_m, parse_structure

        scores = wanda_scores(w, stats.sq)
        nm = parse_structure(self.config.structure)
        sparsity = self.config.sparsity
        assert sparsity is not None  # WandaConfig.__post_init__ resolved it
        keep = keep_lowest_pruned_per_row(scores, sparsity) if nm is None else keep_n_of_m(scores, *nm, where=name)
        w.mul_(keep.to(w.dtype))
        return keep
