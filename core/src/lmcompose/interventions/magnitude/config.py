from __future__ import annotations

from dataclasses import dataclass

from lmcompose.interventions.common import (
    ignore_field,
    sparsity_field,
    structure_field,
    targets_field,
)
from lmcompose.sparsity import resolve_sparsity


@dataclass
class MagnitudeConfig:
    """Magnitude pruning settings."""

    sparsity: float | None = sparsity_field()
    structure: str = structure_field()
    targets: list[str] = targets_field()
    ignore: list[str] = ignore_field()

    def __post_init__(self) -> None:
        self.sparsity = resolve_sparsity(self.sparsity, self.structure)
