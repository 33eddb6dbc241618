"""Wanda's score of one weight matrix: pure tensor functions."""

from __future__ import annotations

from typing import Any


class InputNorms:
    def __init__(self, in_features: int, device: Any):
        import torch

        self.sq = torch.zeros(in_features, dtype=torch.float64, device=device)

    def add(self, x: Any) -> None:
        self.sq += (x.double() ** 2).sum(dim=0)


def wanda_scores(w: Any, sq_norms: Any) -> Any:
    return w.abs().float() * sq_norms.sqrt().float().unsqueeze(0)
