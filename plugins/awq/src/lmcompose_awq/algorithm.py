"""AWQ's pieces (Lin et al., MLSys 2024): activation-aware scale search, scale folding,
clip search. Everything is computed from second moments: for a weight change ΔW, the
squared output error over the calibration tokens is Σ_t ‖ΔW x_t‖² = tr(ΔW H ΔWᵀ) with
H = Σ_t x_t x_tᵀ / n, so the searches cost no forward passes.

Scale search for a group of projections fed the same input x (in features): for α in
{0, 1/n_grid, ..., (n_grid−1)/n_grid}, s = x̄^α / (w̄^(1−α) + 1e-4) (x̄ = mean |x| per input
channel; w̄ = mean over the group's rows of |w| / max |w| of its quantization group),
clamped at 1e-4 and normalized by sqrt(max s · min s); the loss is the output MSE of every
projection of the group, tr(ΔW H ΔWᵀ) with ΔW = Q(W diag s) diag(s)⁻¹ − W on the
min/max grid. s = 1 (no scaling) is a candidate too, so the search never does worse than
plain rounding on its own loss.

Clip search, on the (scaled) weights to be quantized: for each (row, group), the grid's
range [xmin, xmax] is shrunk by r ∈ {1, 1 − 1/n_grid, ..., 1 − max_shrink} and the r with
the smallest output error of that (row, group), Δ_g H_gg Δ_gᵀ, is kept.
"""

from __future__ import annotations

import torch
from lmcompose.calibration import Gram
from lmcompose.quant import QuantGrid, group_index, n_groups, quantize_dequantize


class ActStats(Gram):
    """Σ xxᵀ and Σ |x| (both float64) and the token count of one projection input."""

    def __init__(self, in_features: int, device: torch.device):
        super().__init__(in_features, device)
        self.abs_sum = torch.zeros(in_features, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor) -> None:
        super().add(x)
        self.abs_sum += x.float().abs().sum(dim=0, dtype=torch.float64)

    def mean_abs(self) -> torch.Tensor:
        return (self.abs_sum / max(self.tokens, 1)).float()


def output_error(dw: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """tr(ΔW H ΔWᵀ): the mean squared output error summed over output channels, in float64
    (the searches take an argmin over candidates whose losses can agree to six digits: a
    float32 sum would let the summation order pick the winner)."""
    dw = dw.double()
    return ((dw @ h.double()) * dw).sum()


def rounding_error(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """Q(w) − w on the min/max grid of ``w``."""
    grid = QuantGrid.fit(w, bits, group_size, symmetric)
    scale, zero = grid.expanded(w.shape[1])
    return quantize_dequantize(w, scale, zero, bits) - w


def weight_salience(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """w̄: per input channel, the mean over all rows of |w| / max |w| in its quantization group."""
    w = torch.cat([m.float() for m in weights], dim=0).abs()
    idx = group_index(w.shape[1], group_size, w.device)
    gmax = torch.zeros(w.shape[0], n_groups(w.shape[1], group_size), device=w.device).scatter_reduce_(
        1, idx.expand_as(w), w, reduce="amax"
    )
    return (w / gmax[:, idx].clamp(min=1e-12)).mean(dim=0)


@torch.no_grad()
def search_scale(
    weights: list[torch.Tensor],
    h: torch.Tensor,
    x_mean_abs: torch.Tensor,
    bits: int,
    group_size: int,
    symmetric: bool,
    n_grid: int,
) -> tuple[torch.Tensor, float | None, float, float]:
    """(s, best α or None for s = 1, loss at s, loss at s = 1) for projections fed one input."""
    weights = [w.float() for w in weights]

    def loss(s: torch.Tensor | None) -> float:
        total = 0.0
        for w in weights:
            if s is None:
                dw = rounding_error(w, bits, group_size, symmetric)
            else:
                dw = rounding_error(w * s, bits, group_size, symmetric) / s
            total += float(output_error(dw, h))
        return total

    w_mean = weight_salience(weights, group_size)
    base = loss(None)
    best_s, best_alpha, best = torch.ones_like(x_mean_abs), None, base
    for i in range(n_grid):
        alpha = i / n_grid
        s = (x_mean_abs.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        value = loss(s)
        if value < best:
            best_s, best_alpha, best = s, alpha, value
    return best_s, best_alpha, best, base


@torch.no_grad()
def clipped_grid(
    w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, symmetric: bool, n_grid: int, max_shrink: float
) -> QuantGrid:
    """The grid for ``w`` (out, in) whose range per (row, group) minimizes that group's output error."""
    w = w.float()
    out_f, in_f = w.shape
    ng = n_groups(in_f, group_size)
    g = group_size if 0 < group_size < in_f else in_f
    best_err = torch.full((out_f, ng), float("inf"), dtype=torch.float64, device=w.device)
    h = h.double()
    best = QuantGrid.fit(w, bits, group_size, symmetric)
    steps = int(round(max_shrink * n_grid))
    for i in range(steps + 1):
        r = 1 - i / n_grid
        grid = QuantGrid.fit(w * r, bits, group_size, symmetric)  # the range shrunk by r around 0
        scale, zero = grid.expanded(in_f)
        dw = (quantize_dequantize(w, scale, zero, bits) - w).double()  # float64, as output_error
        err = torch.stack(
            [
                (
                    (dw[:, k * g : (k + 1) * g] @ h[k * g : (k + 1) * g, k * g : (k + 1) * g])
                    * dw[:, k * g : (k + 1) * g]
                ).sum(1)
                for k in range(ng)
            ],
            dim=1,
        )
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best.scale = torch.where(better, grid.scale, best.scale)
        best.zero = torch.where(better, grid.zero, best.zero)
    return best
