from __future__ import annotations

from dataclasses import dataclass, field

from lmcompose.interventions.common import ignore_field, targets_field
from lmcompose.sparsity import resolve_sparsity


@dataclass
class MagnitudeConfig:
    """Magnitude pruning settings."""

    sparsity: float | None = field(
        default=None,
        metadata={"help": "fraction of weights zeroed in each targeted matrix, in [0, 1); default 0.5, and 1-N/M with an N:M structure"},
    )
    structure: str = field(
        default="unstructured",
        metadata={"help": "'unstructured', or 'N:M': at most N nonzeros in every M consecutive input weights (e.g. 2:4)"},
    )
    targets: list[str] = targets_field()
    ignore: list[str] = ignore_field()

    def __post_init__(self) -> None:
        self.sparsity = resolve_sparsity(self.sparsity, self.structure)
