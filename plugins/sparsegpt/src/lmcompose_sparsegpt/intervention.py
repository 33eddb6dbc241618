"""The sparsegpt intervention: SparseGPT on the core's layer-sequential pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from lmcompose.interventions.calibrated import LayerwisePruner, groups_sharing_stats

from lmcompose_sparsegpt.config import SparseGPTConfig

if TYPE_CHECKING:  # pragma: no cover - the statistics import torch; validating a config must not
    import torch
    from lmcompose import LM
    from lmcompose.calibration import Gram


class SparseGPT(LayerwisePruner["Gram"]):
    """SparseGPT: OBS-based one-shot pruning, unstructured or N:M.

    Lifecycle: ``apply`` runs the layer-sequential pipeline: for each decoder layer it
    accumulates each projection's Hessian XXᵀ over the calibration windows, prunes column
    block by column block with the OBS weight update, keeps the keep masks
    (``lm.compression``), and feeds the pruned layer's outputs to the next; ``project``
    re-zeros the masked weights after a later step. Sample config::

        sparsegpt:sparsity=0.5
        sparsegpt:structure=2:4,n_samples=128,seqlen=2048,percdamp=0.01
    """

    name = "sparsegpt"
    Config = SparseGPTConfig
    config: SparseGPTConfig

    def new_stats(self, name: str, module: torch.nn.Module, in_features: int) -> Gram:
        from lmcompose.calibration import Gram

        return Gram(in_features, cast("torch.Tensor", module.weight).device)

    def observe(self, stats: Gram, x: torch.Tensor) -> None:
        stats.add(x)

    def process_layer(
        self, lm: LM, index: int, names: list[str], stats_of: Callable[[str], Gram], messages: list[str]
    ) -> None:
        """Projections fed one tensor (q/k/v, gate/up) share H: their weights are stacked
        row-wise and pruned in one sweep (one Cholesky, one column loop), each block's
        unstructured mask still chosen within each matrix's own rows, so every matrix is
        pruned as a sweep of its own would prune it."""
        import torch

        for group in groups_sharing_stats(names, stats_of):
            weights = [lm.weight(n) for n in group]
            if len(group) == 1:
                self.record_mask(lm, group[0], self.prune_weight(group[0], weights[0], stats_of(group[0]), messages))
                continue
            stacked = torch.cat(weights, dim=0)
            keep = self.prune_weight(
                "+".join(group), stacked, stats_of(group[0]), messages, rows=[w.shape[0] for w in weights]
            )
            start = 0
            for name, w in zip(group, weights, strict=True):
                rows = slice(start, start + w.shape[0])
                w.copy_(stacked[rows])
                self.record_mask(lm, name, keep[rows].clone())
                start += w.shape[0]

    def prune_weight(
        self, name: str, w: torch.Tensor, stats: Gram, messages: list[str], rows: list[int] | None = None
    ) -> torch.Tensor:
        from lmcompose.sparsity import parse_structure

        from lmcompose_sparsegpt.algorithm import sparsegpt_prune

        sparsity = self.config.sparsity
        assert sparsity is not None  # SparseGPTConfig.__post_init__ resolved it
        return sparsegpt_prune(
            w,
            stats.xxt,
            sparsity,
            parse_structure(self.config.structure),
            self.config.blocksize,
            self.config.percdamp,
            messages,
            name,
            rows=rows,
        )
