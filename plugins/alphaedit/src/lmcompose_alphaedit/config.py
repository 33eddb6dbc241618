"""AlphaEdit settings: the shared locate-then-edit settings, the null-space threshold and the
ridge weight. Fields left at None take the preset for the model (presets.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmcompose.editing import EditHParams, LocateEditConfig
from lmcompose.errors import ConfigError


@dataclass
class AlphaEditConfig(LocateEditConfig):
    """AlphaEdit hyperparameters (names follow the AlphaEdit code's hparams: L2 is ``l2``)."""

    nullspace_threshold: float | None = field(
        default=None,
        metadata={
            "help": "eigenvalues of the preserved keys' covariance E[kk^T] below this span the null space the update "
            "is confined to (AlphaEdit: 2e-2)"
        },
    )
    l2: float | None = field(
        default=None,
        metadata={"help": "weight of the identity in the update's solve, the ridge term (AlphaEdit: L2 = 10)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("nullspace_threshold", "l2"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name}={v} must be > 0")


@dataclass(frozen=True)
class AlphaEditHParams(EditHParams):
    """AlphaEdit's hyperparameters for one model, resolved. ``nullspace_threshold`` None: the
    rule's threshold, derived from each layer's covariance when the step runs."""

    l2: float
    nullspace_threshold: float | None = None
