"""Wanda's score of one weight matrix: pure tensor functions."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class InputNorms:
    def __init__(self, in_features: int, device: torch.device | str):
        import torch

        self.sq = torch.zeros(in_features, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor) -> None:
        self.sq += (x.double() ** 2).sum(dim=0)


def wanda_scores(w: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    return w.abs().float() * sq_norms.sqrt().float().unsqueeze(0)
