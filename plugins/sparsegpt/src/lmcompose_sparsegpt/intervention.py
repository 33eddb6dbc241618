"""The sparsegpt intervention: SparseGPT on the core's layer-sequential pipeline."""

from __future__ import annotations

from typing import Any

from lmcompose.interventions.calibrated import LayerwisePruner

from lmcompose_sparsegpt.config import SparseGPTConfig


class HessianStats:
    def __init__(self, in_features: int, device: Any):
        import torch

        self.h = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: Any) -> None:
        x = x.float()
        self.h.addmm_(x.t(), x)
        self.tokens += x.shape[0]


class SparseGPT(LayerwisePruner):
    """SparseGPT: OBS-based one-shot pruning, unstructured or N:M; project() re-zeros the mask."""

    name = "sparsegpt"
    Config = SparseGPTConfig

    def new_stats(self, name: str, module: Any, in_features: int) -> HessianStats:
        return HessianStats(in_features, module.weight.device)

    def observe(self, stats: HessianStats, x: Any) -> None:
        stats.add(x)

    def prune_weight(self, name: str, w: Any, stats: HessianStats, messages: list[str]) -> Any:
        from lmcompose.sparsity import parse_structure

        from lmcompose_sparsegpt.algorithm import sparsegpt_prune

        return sparsegpt_prune(w, stats.h, self.config.sparsity, parse_structure(self.config.structure),
                               self.config.blocksize, self.config.percdamp, messages, name)
