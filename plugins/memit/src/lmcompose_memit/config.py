"""MEMIT settings: the shared locate-then-edit settings and λ. Fields left at None take the
preset for the model (presets.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmcompose.editing import EditHParams, LocateEditConfig
from lmcompose.errors import ConfigError


@dataclass
class MEMITConfig(LocateEditConfig):
    """MEMIT hyperparameters (names follow the MEMIT code's hparams where one exists)."""

    mom2_update_weight: float | None = field(
        default=None,
        metadata={"help": "lambda, weight of the key covariance E[kk^T] in the update's solve (MEMIT: 15000-20000)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        v = self.mom2_update_weight
        if v is not None and not v > 0:
            raise ConfigError(f"mom2_update_weight={v} must be > 0")


@dataclass(frozen=True)
class MEMITHParams(EditHParams):
    """MEMIT's hyperparameters for one model, resolved (the preset under the config's values)."""

    mom2_update_weight: float
