"""MEMIT's own piece, the closed-form update; everything it shares with other
locate-then-edit methods (v*, keys, the spread) lives in ``lmcompose.editing`` and is
re-exported here under the names this module always had."""

from __future__ import annotations

import torch
from lmcompose.editing import (  # noqa: F401  (the names this module has always offered)
    STARTERS,
    PrefixKV,
    Row,
    SplitGroup,
    Tail,
    VStarResult,
    compute_context,
    context_templates,
    iter_batches,
    key_rows,
    kl_term,
    length_groups,
    module_io,
    module_values_at,
    optimize_vstar,
    pad_id,
    pad_right,
    prefix_groups,
    residual_after,
    residual_entering,
    rewrite_rows,
    split_forward,
    subject_last_index,
    target_ids,
    template_key_mean,
    through_post_norm,
)
from lmcompose.editing import row_adam as _adam  # noqa: F401

__all__ = ["memit_delta"]


def memit_delta(keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor, lam: float) -> torch.Tensor:
    """ΔW = R Kᵀ (λC + K Kᵀ)⁻¹ in float64 (MEMIT eq. 14): keys K (d_in, n), residuals
    R (d_out, n), covariance C (d_in, d_in). Returns (d_out, d_in)."""
    k = keys.to(cov.device).double()
    adj = torch.linalg.solve(lam * cov.double() + k @ k.T, k)
    return resid.to(cov.device).double() @ adj.T
