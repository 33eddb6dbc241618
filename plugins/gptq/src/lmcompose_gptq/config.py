from __future__ import annotations

from dataclasses import dataclass, field

from lmcompose.interventions.calibrated import bits_field, group_size_field, symmetric_field
from lmcompose.interventions.common import (
    ignore_field,
    n_samples_field,
    seqlen_field,
    targets_field,
)


@dataclass
class GPTQConfig:
    """GPTQ settings (defaults from the paper's code; the grid is rtn's)."""

    bits: int = bits_field()
    group_size: int = group_size_field()
    symmetric: bool = symmetric_field()
    act_order: bool = field(
        default=False,
        metadata={
            "help": "quantize columns in order of decreasing Hessian diagonal; groups are then fitted up front on "
            "the original weights (static groups)"
        },
    )
    blocksize: int = field(
        default=128,
        metadata={
            "help": "columns per lazy-update block (speed only: the result does not depend on it)",
            "range": (1, 1 << 16),
        },
    )
    true_sequential: bool = field(
        default=False,
        metadata={
            "help": "calibrate a layer's projections group by group in forward order (q/k/v, o, gate/up, down), each "
            "on inputs through the groups already quantized (AutoGPTQ's true_sequential, the paper's "
            "setting); false: one pass per layer"
        },
    )
    percdamp: float = field(
        default=0.01, metadata={"help": "Hessian damping as a fraction of its mean diagonal", "range": (0.0, 10.0)}
    )
    n_samples: int | None = n_samples_field()
    seqlen: int | None = seqlen_field()
    targets: list[str] = targets_field()
    ignore: list[str] = ignore_field()
