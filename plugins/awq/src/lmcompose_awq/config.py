from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmcompose.interventions.calibrated import bits_field, group_size_field, symmetric_field
from lmcompose.interventions.common import (
    ignore_field,
    n_samples_field,
    seqlen_field,
    targets_field,
)


@dataclass
class AWQConfig:
    """AWQ settings (defaults from the reference code; asymmetric grid, rtn's)."""

    bits: int = bits_field()
    group_size: int = group_size_field()
    symmetric: bool = symmetric_field()
    n_grid: int = field(
        default=20,
        metadata={
            "help": "grid points of the scale search (alpha = i/n_grid) and of the clip search",
            "range": (1, 1000),
        },
    )
    max_shrink: float = field(
        default=0.5,
        metadata={"help": "clip search: shrink each group's range by up to this fraction", "range": (0.0, 0.99)},
    )
    scale_search: bool = field(
        default=True,
        metadata={"help": "search per-channel scales and fold them into the preceding op (false: clip search only)"},
    )
    clip_search: bool = field(
        default=True, metadata={"help": "search each group's clipping range on the output error (false: min/max range)"}
    )
    clip_qk: bool = field(
        default=True,
        metadata={
            "help": "clip search for the query/key projections too (false: skip them as the reference does, 'due to "
            "qk bmm'; 3-bit SmolLM2 perplexity 45.64 against 41.26, docs/benchmarks.md); a fused q/k/v "
            "matrix counts as query/key"
        },
    )
    calibrate_next_on: Literal["quantized", "full"] = field(
        default="quantized",
        metadata={
            "help": "the next layer's statistics come from this layer's quantized outputs, or from its "
            "full-precision outputs (full: the reference's order, which quantizes after all layers are "
            "searched)"
        },
    )
    recompress: bool = field(
        default=True,
        metadata={
            "help": "under policy recompress, run AWQ again after a later edit (false: leave the edited weights as "
            "they are, as the paper's code did)"
        },
    )
    n_samples: int | None = n_samples_field()
    seqlen: int | None = seqlen_field()
    targets: list[str] = targets_field()
    ignore: list[str] = ignore_field()
