"""The memit intervention: MEMIT on any architecture spec in core."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmcompose.api import Context, EditRecord
from lmcompose.editing import EditHParams, LocateThenEdit

if TYPE_CHECKING:
    import torch
    from lmcompose import LM

from lmcompose_memit.config import MEMITConfig, MEMITHParams


class MEMIT(LocateThenEdit):
    """Mass-Editing Memory in a Transformer (Meng et al., ICLR 2023).

    Lifecycle: ``apply`` takes ``ctx.edits`` (the first ``n_edits``), computes the covariance
    statistics of the edit layers' MLP inputs (cached by the weights that produce them),
    optimises each edit's target hidden state v* at the last edit layer, and spreads the
    residual over the edit layers as covariance-weighted rank updates of their MLP output
    projections (one layer at a time on an offloaded model; ``batches=K`` applies K batches
    one after another); it has no ``project`` (an edit is not a constraint to restore).
    Sample config::

        memit                               # the preset for the model (presets.py)
        memit:layers=3+4+5+6+7,v_num_grad_steps=25,mom2_update_weight=15000,stats_from=base
    """

    name = "memit"
    Config = MEMITConfig
    HParams = MEMITHParams

    def preset_for(self, lm: LM) -> tuple[str, dict[str, Any]]:
        from lmcompose_memit.presets import preset_for

        return preset_for(lm)

    def begin(self, lm: LM, hp: EditHParams, covs: dict[int, torch.Tensor], ctx: Context) -> dict[str, object]:
        assert isinstance(hp, MEMITHParams)  # what self.HParams resolves
        self._lam = hp.mom2_update_weight
        self._covs = covs
        return {}

    def solve(self, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        from lmcompose_memit.algorithm import memit_delta

        return memit_delta(keys, resid, self._covs[layer], self._lam)

    def spread(
        self,
        lm: LM,
        batch: Sequence[EditRecord],
        targets: torch.Tensor,
        templates: Sequence[str],
        layers: Sequence[int],
        lam: float,
        covs: dict[int, torch.Tensor],
    ) -> dict[str, float]:
        """Write the v* ``targets`` (edits x hidden, at the last edit layer) into the MLP output
        projections of ``layers`` with λ = ``lam`` and covariances ``covs`` by layer."""
        from lmcompose.editing import spread_residual

        from lmcompose_memit.algorithm import memit_delta

        c = self.config
        return spread_residual(
            lm,
            batch,
            targets,
            templates,
            layers,
            lambda layer, k, r: memit_delta(k, r, covs[layer], lam),
            c.max_batch_tokens,
            c.compute_dtype,
        )
