"""Pieces shared by the built-in compressors (kept torch-free at import)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import field
from typing import TYPE_CHECKING, Protocol

from lmcompose.errors import ConfigError

if TYPE_CHECKING:
    from torch.nn import Module

    from lmcompose.models.handle import LM

__all__ = [
    "Timer",
    "ignore_field",
    "n_samples_field",
    "selected_layers",
    "seqlen_field",
    "sparsity_field",
    "structure_field",
    "targets_field",
]


def targets_field() -> list[str]:
    return field(
        default_factory=list,
        metadata={
            "help": "projections to change, by name suffix or glob (e.g. mlp.down_proj); '+'-separated on the "
            "command line; empty = every decoder projection"
        },
    )


def ignore_field() -> list[str]:
    return field(default_factory=list, metadata={"help": "projections to leave alone (same patterns as targets)"})


class TargetedConfig(Protocol):
    """A compressor config that picks projections by name (``targets_field``, ``ignore_field``)."""

    @property
    def targets(self) -> Sequence[str]: ...

    @property
    def ignore(self) -> Sequence[str]: ...


def selected_layers(lm: LM, config: TargetedConfig, step: str) -> list[tuple[str, Module]]:
    layers = lm.target_layers(config.targets, config.ignore)
    if not layers:
        raise ConfigError(
            f"step {step!r}: targets={list(config.targets)} ignore={list(config.ignore)} select no projection of "
            f"this {lm.arch.name} model; names look like {lm.linear_layers()[0][0]!r}"
        )
    return layers


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.start


def n_samples_field() -> int | None:
    return field(
        default=None, metadata={"help": "calibration windows (default: the run's, 128)", "range": (1, 1 << 20)}
    )


def seqlen_field() -> int | None:
    return field(
        default=None,
        metadata={"help": "tokens per calibration window (default: the run's, 512)", "range": (2, 1 << 20)},
    )


def sparsity_field() -> float | None:
    return field(
        default=None,
        metadata={
            "help": "fraction of weights zeroed in each targeted matrix, in [0, 1); default 0.5, and 1-N/M with an "
            "N:M structure"
        },
    )


def structure_field() -> str:
    return field(
        default="unstructured",
        metadata={
            "help": "'unstructured', or 'N:M': at most N nonzeros in every M consecutive input weights (e.g. 2:4)"
        },
    )
