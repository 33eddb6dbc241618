from __future__ import annotations

from typing import Any

import torch

from lmcompose.sparsity import keep_lowest_pruned, keep_n_of_m, parse_structure


@torch.no_grad()
def prune_layer(w: torch.Tensor, config: Any, where: str) -> torch.Tensor:
    """Zero ``w`` (out, in) in place by magnitude; return the keep mask."""
    scores = w.abs().float()
    nm = parse_structure(config.structure)
    keep = keep_lowest_pruned(scores, config.sparsity) if nm is None else keep_n_of_m(scores, *nm, where=where)
    w.mul_(keep.to(w.dtype))
    return keep
