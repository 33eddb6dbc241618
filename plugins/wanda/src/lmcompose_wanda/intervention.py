"""Wanda (Sun, Liu, Bair, Kolter 2024): score |W_ij| · ‖X_j‖₂, the norm of input feature j
over all calibration tokens; prune the lowest scores of each output row (unstructured:
round(sparsity · in) per row) or the M − N lowest of each group of M (N:M). No weight
update. Runs on the core's layer-sequential pipeline, so layer i's norms are measured on
inputs that already went through the pruned layers before it, as in the reference code."""

from __future__ import annotations

from typing import Any

from lmcompose.interventions.calibrated import LayerwisePruner

from lmcompose_wanda.config import WandaConfig


class InputNorms:
    def __init__(self, in_features: int, device: Any):
        import torch

        self.sq = torch.zeros(in_features, dtype=torch.float64, device=device)

    def add(self, x: Any) -> None:
        self.sq += (x.double() ** 2).sum(dim=0)


def wanda_scores(w: Any, sq_norms: Any) -> Any:
    return w.abs().float() * sq_norms.sqrt().float().unsqueeze(0)


class Wanda(LayerwisePruner):
    """Wanda: |W| x input norm, per output row; project() re-zeros the mask."""

    name = "wanda"
    Config = WandaConfig

    def new_stats(self, name: str, module: Any, in_features: int) -> InputNorms:
        return InputNorms(in_features, module.weight.device)

    def observe(self, stats: InputNorms, x: Any) -> None:
        stats.add(x)

    def prune_weight(self, name: str, w: Any, stats: InputNorms, messages: list[str]) -> Any:
        from lmcompose.sparsity import keep_lowest_pruned_per_row, keep_n_of_m, parse_structure

        scores = wanda_scores(w, stats.sq)
        nm = parse_structure(self.config.structure)
        keep = keep_lowest_pruned_per_row(scores, self.config.sparsity) if nm is None else keep_n_of_m(scores, *nm, where=name)
        w.mul_(keep.to(w.dtype))
        return keep
