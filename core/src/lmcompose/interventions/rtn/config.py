from __future__ import annotations

from dataclasses import dataclass, field

from lmcompose.interventions.common import ignore_field, targets_field


@dataclass
class RTNConfig:
    """Round-to-nearest quantization settings."""

    bits: int = field(default=4, metadata={"help": "bits per weight, 2 to 8"})
    group_size: int = field(
        default=128,
        metadata={
            "help": "input columns sharing one scale/zero; <= 0 means one group per row; a shorter last group when "
            "it does not divide the width"
        },
    )
    symmetric: bool = field(
        default=False, metadata={"help": "symmetric grid around 0 (zero point fixed at 2^bits/2) instead of min/max"}
    )
    targets: list[str] = targets_field()
    ignore: list[str] = ignore_field()
