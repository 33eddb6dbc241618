"""The sparsegpt intervention: SparseGPT on the core's layer-sequential pipeline."""

from __future__ import annotations

from typing import Any

from lmcompose.calibration import Gram
from lmcompose.interventions.calibrated import LayerwisePruner

from lmcompose_sparsegpt.config import SparseGPTConfig


class SparseGPT(LayerwisePruner):
    """SparseGPT: OBS-based one-shot pruning, unstructured or N:M; project() re-zeros the mask."""

    name = "sparsegpt"
    Config = SparseGPTConfig

    def new_stats(self, name: str, module: Any, in_features: int) -> Gram:
        return Gram(in_features, module.weight.device)

    def observe(self, stats: Gram, x: Any) -> None:
        stats.add(x)

    def prune_weight(self, name: str, w: Any, stats: Gram, messages: list[str]) -> Any:
        from lmcompose.sparsity import parse_structure

        from lmcompose_sparsegpt.algorithm import sparsegpt_prune

        return sparsegpt_prune(w, stats.xxt, self.config.sparsity, parse_structure(self.config.structure),
                               self.config.blocksize, self.config.percdamp, messages, name)
