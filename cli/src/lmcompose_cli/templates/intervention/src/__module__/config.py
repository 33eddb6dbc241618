from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class {{Class}}Config:
    """Settings of {{name}}. Every field has a default and help text."""

    scale: float = field(default=0.01, metadata={"help": "noise std as a fraction of each projection's weight std, in [0, 1]"})
    targets: list[str] = field(default_factory=list, metadata={"help": "projections to change (name suffix or glob); empty = all decoder projections"})
    ignore: list[str] = field(default_factory=list, metadata={"help": "projections to leave alone"})
