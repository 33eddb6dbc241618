"""The uniform weight-quantization grid shared by rtn, GPTQ and AWQ.

This is GPTQ's quantizer (Frantar et al. 2023, ``quant.py``): per row (and per group of
``group_size`` input columns), asymmetric min/max with the range widened to include 0, or
symmetric around 0 with the zero point fixed at (2^b)/2. The grid always contains 0, so a
pruned weight stays representable.

Groups run along the input dimension; when ``group_size`` does not divide the width, the
last group is shorter (documented in docs/interventions.md). ``group_size <= 0`` means one
group per output row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["QuantGrid", "fit_scale_zero", "group_index", "max_level", "n_groups", "quantize_dequantize"]


def max_level(bits: int) -> int:
    return 2**bits - 1


def fit_scale_zero(x: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for each row of ``x`` (rows, cols); both shaped (rows,)."""
    maxq = max_level(bits)
    x = x.float()
    xmin = torch.clamp(x.min(dim=1).values, max=0)
    xmax = torch.clamp(x.max(dim=1).values, min=0)
    if symmetric:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    flat = (xmin == 0) & (xmax == 0)
    xmin = torch.where(flat, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(flat, torch.full_like(xmax, 1.0), xmax)
    scale = (xmax - xmin) / maxq
    if symmetric:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale, zero


def quantize_dequantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``x`` onto the grid ``scale * (q - zero)``, q in [0, 2^bits - 1].

    ``scale``/``zero`` broadcast against ``x`` (e.g. shaped (rows, 1) for a column block).
    """
    maxq = max_level(bits)
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return (scale * (q - zero)).to(x.dtype)


def group_index(in_features: int, group_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Group number of every input column."""
    g = group_size if group_size > 0 else in_features
    return torch.arange(in_features, device=device) // g


def n_groups(in_features: int, group_size: int) -> int:
    g = group_size if group_size > 0 else in_features
    return -(-in_features // g)


@dataclass
class QuantGrid:
    """The grid one weight matrix (out, in) was quantized onto: per-(row, group) scale/zero."""

    bits: int
    group_size: int
    symmetric: bool
    scale: torch.Tensor  # (out, n_groups), float32
    zero: torch.Tensor  # (out, n_groups), float32

    @classmethod
    def fit(cls, w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> QuantGrid:
        out_f, in_f = w.shape
        g = group_size if group_size > 0 else in_f
        scales, zeros = [], []
        for start in range(0, in_f, g):
            s, z = fit_scale_zero(w[:, start : start + g], bits, symmetric)
            scales.append(s)
            zeros.append(z)
        return cls(bits, group_size, symmetric, torch.stack(scales, 1), torch.stack(zeros, 1))

    def expanded(self, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = group_index(in_features, self.group_size, self.scale.device)
        return self.scale[:, idx], self.zero[:, idx]

    def snap_(self, w: torch.Tensor) -> torch.Tensor:
        """Round ``w`` (out, in) in place onto this grid; returns ``w``."""
        scale, zero = self.expanded(w.shape[1])
        w.copy_(quantize_dequantize(w.float(), scale.to(w.device), zero.to(w.device), self.bits))
        return w

    def on_grid(self, w: torch.Tensor, atol: float = 1e-5) -> bool:
        """True if every weight is a grid point (and within the clamp range)."""
        scale, zero = self.expanded(w.shape[1])
        # in bf16/fp16 storage the grid itself is rounded to that dtype
        snapped = quantize_dequantize(w.float(), scale.to(w.device), zero.to(w.device), self.bits).to(w.dtype)
        return bool(torch.allclose(w.float(), snapped.float(), rtol=0, atol=atol * float(scale.max())))

    @property
    def overhead_bits(self) -> int:
        """Storage of the grid itself: a 16-bit scale and a 16-bit zero per group."""
        return int(self.scale.numel()) * 32
