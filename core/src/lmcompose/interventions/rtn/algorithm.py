"""Round-to-nearest quantization of one weight matrix: pure tensor functions."""

from __future__ import annotations

import torch

from lmcompose.quant import QuantGrid

__all__ = ["round_to_nearest"]


@torch.no_grad()
def round_to_nearest(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> QuantGrid:
    """Fit ``w``'s grid (out, in; per row and group of ``group_size`` inputs, <= 0 for one
    group per row) and round ``w`` onto it in place; return the grid."""
    grid = QuantGrid.fit(w.float(), bits, group_size, symmetric)
    grid.snap_(w)
    return grid
