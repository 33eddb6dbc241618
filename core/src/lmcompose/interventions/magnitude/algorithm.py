from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lmcompose.sparsity import keep_lowest_pruned, keep_n_of_m, parse_structure

if TYPE_CHECKING:
    from lmcompose.interventions.magnitude.config import MagnitudeConfig


@torch.no_grad()
def prune_layer(w: torch.Tensor, config: MagnitudeConfig, where: str) -> torch.Tensor:
    """Zero ``w`` (out, in) in place by magnitude; return the keep mask."""
    scores = w.abs().float()
    nm = parse_structure(config.structure)
    sparsity = config.sparsity
    assert sparsity is not None  # MagnitudeConfig.__post_init__ resolved it
    keep = keep_lowest_pruned(scores, sparsity) if nm is None else keep_n_of_m(scores, *nm, where=where)
    w.mul_(keep.to(w.dtype))
    return keep
