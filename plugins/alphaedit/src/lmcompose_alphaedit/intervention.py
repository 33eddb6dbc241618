"""The alphaedit intervention: AlphaEdit on any architecture spec in core."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmcompose.api import Context, EditRecord
from lmcompose.editing import EditHParams, LocateThenEdit

from lmcompose_alphaedit.config import AlphaEditConfig, AlphaEditHParams

if TYPE_CHECKING:
    import torch
    from lmcompose import LM


class AlphaEdit(LocateThenEdit):
    """AlphaEdit: Null-Space Constrained Knowledge Editing (Fang et al., ICLR 2025).

    Lifecycle: ``apply`` takes ``ctx.edits`` (the first ``n_edits``), computes the covariance
    of the edit layers' MLP inputs over the statistics corpus (the preserved knowledge,
    cached), and from it each layer's null-space projector P; then, batch after batch
    (``batches=K``), optimises v* as MEMIT does and writes each layer's share of the residual
    with ΔWᵀ = (P (K Kᵀ + K_p K_pᵀ) + λ I)⁻¹ P K Rᵀ, adding the batch's keys (recomputed
    on the edited model) to K_p. It has no ``project`` (an edit is not a constraint to
    restore). Earlier batches' keys are kept within one step. Sample config::

        alphaedit                              # the preset for the model (presets.py)
        alphaedit:batches=10,nullspace_threshold=0.02,l2=10,layers=3+4+5+6+7
    """

    name = "alphaedit"
    Config = AlphaEditConfig
    HParams = AlphaEditHParams

    def preset_for(self, lm: LM) -> tuple[str, dict[str, Any]]:
        from lmcompose_alphaedit.presets import preset_for

        return preset_for(lm)

    def begin(self, lm: LM, hp: EditHParams, covs: dict[int, torch.Tensor], ctx: Context) -> dict[str, object]:
        import torch

        assert isinstance(hp, AlphaEditHParams)  # what self.HParams resolves

        from lmcompose_alphaedit.algorithm import null_space_projector
        from lmcompose_alphaedit.presets import RELATIVE_THRESHOLD

        self._l2 = hp.l2
        self._projectors: dict[int, torch.Tensor] = {}
        self._previous: dict[int, torch.Tensor] = {}
        dims: dict[int, int] = {}
        thresholds: dict[int, float] = {}
        for layer, cov in covs.items():
            t = hp.nullspace_threshold
            if t is None:  # the rule: relative to the spectrum's scale
                t = RELATIVE_THRESHOLD * float(torch.diagonal(cov.double()).mean())
            thresholds[layer] = float(t)
            p, dims[layer] = null_space_projector(cov, float(t), where=f"step 'alphaedit', layer {layer}: ")
            self._projectors[layer] = p
            self._previous[layer] = torch.zeros_like(p)
        return {
            "nullspace_dims": dims,
            "nullspace_thresholds": thresholds,
            "key_dims": {i: int(c.shape[0]) for i, c in covs.items()},
        }

    def solve(self, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        from lmcompose_alphaedit.algorithm import alphaedit_delta

        return alphaedit_delta(keys, resid, self._projectors[layer], self._previous[layer], self._l2)

    def end_batch(self, lm: LM, batch: Sequence[EditRecord], templates: Sequence[str], layers: Sequence[int]) -> None:
        from lmcompose.editing import edit_keys

        c, arch = self.config, lm.arch
        for layer in layers:
            k = (
                edit_keys(
                    lm, batch, templates, f"{arch.layers}.{layer}.{arch.mlp_out}", c.max_batch_tokens, c.compute_dtype
                )
                .double()
                .T
            )
            self._previous[layer] += k @ k.T
