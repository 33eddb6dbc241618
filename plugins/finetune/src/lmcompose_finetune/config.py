"""Settings of the fine-tuning editors. ``ft`` follows ROME's FT-L baseline (hparams/FT/*_constr.json);
``lora`` a LoRA adapter through peft."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmcompose.editing import check_edit_selection
from lmcompose.errors import ConfigError


@dataclass
class TrainConfig:
    """What both editors share: which edits, how long and how fast to train, in how many batches."""

    n_edits: int | None = field(
        default=None,
        metadata={
            "help": "edits to apply: the first N of the run's edit set (default: all of them); the strength knob"
        },
    )
    layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "decoder layers whose modules are trained, e.g. 3+4+5 (default: MEMIT's rule layers, early-middle)"
        },
    )
    steps: int = field(
        default=25,
        metadata={"help": "optimisation steps per batch (each over all of the batch's edits)", "range": (1, 100000)},
    )
    lr: float = field(default=5e-4, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    early_stop_loss: float = field(
        default=1e-2, metadata={"help": "a batch stops training once its mean target NLL is below this"}
    )
    batches: int = field(
        default=0,
        metadata={
            "help": "split the edits into this many batches trained one after another (sequential editing); 0 = one "
            "batch",
            "range": (0, 1 << 20),
        },
    )
    max_batch_tokens: int = field(
        default=4096, metadata={"help": "padded tokens per forward pass", "range": (16, 1 << 24)}
    )
    seed: int = field(default=0, metadata={"help": "seed of the adapter's initialisation (lora)"})

    def __post_init__(self) -> None:
        check_edit_selection(self.n_edits, self.layers)
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr} must be > 0")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay} must be >= 0")


@dataclass
class FTConfig(TrainConfig):
    """FT-L: the MLP output projections of ``layers`` (or ``modules``), each weight clamped to
    within ``norm_constraint`` of its value before the step (ROME's constrained baseline)."""

    norm_constraint: float = field(
        default=5e-3,
        metadata={
            "help": "largest change of any weight (L-infinity); 0 = unconstrained fine-tuning (ROME FT: 5e-5 on "
            "GPT-J; 5e-3 chosen on SmolLM2-135M, docs/finetune.md)"
        },
    )
    modules: list[str] = field(
        default_factory=list,
        metadata={
            "help": "module name suffixes within each layer to train, '+'-separated (default: the MLP output "
            "projection)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm_constraint < 0:
            raise ConfigError(f"norm_constraint={self.norm_constraint} must be >= 0 (0 = unconstrained)")


@dataclass
class LoRAConfig(TrainConfig):
    """LoRA: W + (alpha / rank) B A on ``target_modules`` of ``layers``, A and B trained, then merged."""

    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    rank: int = field(default=8, metadata={"help": "LoRA rank r", "range": (1, 1 << 16)})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (the update is scaled by alpha / rank)"})
    target_modules: list[str] = field(
        default_factory=list,
        metadata={
            "help": "projections given an adapter, by name suffix or glob, '+'-separated (default: the MLP "
            "projections, e.g. mlp.up_proj+mlp.down_proj)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1:
            raise ConfigError(f"rank={self.rank}: the LoRA rank must be at least 1")
        if not self.alpha > 0:
            raise ConfigError(f"alpha={self.alpha} must be > 0")
