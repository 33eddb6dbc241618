from __future__ import annotations

from dataclasses import dataclass, field

from lmcompose.interventions.common import (
    ignore_field,
    n_samples_field,
    seqlen_field,
    sparsity_field,
    structure_field,
    targets_field,
)
from lmcompose.sparsity import resolve_sparsity


@dataclass
class SparseGPTConfig:
    """SparseGPT settings (defaults from the paper's code)."""

    sparsity: float | None = sparsity_field()
    structure: str = structure_field()
    blocksize: int = field(
        default=128,
        metadata={"help": "columns per lazy-update block; masks are chosen per block", "range": (1, 1 << 16)},
    )
    percdamp: float = field(
        default=0.01, metadata={"help": "Hessian damping as a fraction of its mean diagonal", "range": (0.0, 10.0)}
    )
    n_samples: int | None = n_samples_field()
    seqlen: int | None = seqlen_field()
    targets: list[str] = targets_field()
    ignore: list[str] = ignore_field()

    def __post_init__(self) -> None:
        self.sparsity = resolve_sparsity(self.sparsity, self.structure)
