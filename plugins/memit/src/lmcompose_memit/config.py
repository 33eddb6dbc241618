"""MEMIT settings. Fields left at None take the preset for the model (presets.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmcompose.errors import ConfigError


@dataclass
class MEMITConfig:
    """MEMIT hyperparameters (names follow the MEMIT code's hparams where one exists)."""

    n_edits: int | None = field(
        default=None,
        metadata={"help": "edits to apply: the first N of the run's edit set (default: all of them); the strength knob"},
    )
    layers: list[int] | None = field(
        default=None,
        metadata={"help": "decoder layers whose MLP output projection is edited, e.g. 3+4+5+6+7 (default: the model's preset)"},
    )
    mom2_update_weight: float | None = field(
        default=None,
        metadata={"help": "lambda, weight of the key covariance E[kk^T] in the update's solve (MEMIT: 15000-20000)"},
    )
    v_num_grad_steps: int | None = field(default=None, metadata={"help": "most optimisation steps for v* (MEMIT: 25)", "range": (1, 10000)})
    v_lr: float | None = field(default=None, metadata={"help": "Adam learning rate for v* (MEMIT: 0.5)"})
    v_weight_decay: float | None = field(default=None, metadata={"help": "weight on |delta| / |h|^2 in the v* loss (MEMIT GPT-J: 0.5)"})
    clamp_norm_factor: float | None = field(
        default=None, metadata={"help": "|delta| is clamped to this times |h| at the edited position (MEMIT GPT-J: 0.75)"},
    )
    kl_factor: float | None = field(default=None, metadata={"help": "weight of the KL term on '{subject} is a' (MEMIT: 0.0625)"})
    early_stop_loss: float = field(default=5e-2, metadata={"help": "an edit stops optimising once its v* loss is below this"})
    context_templates: int = field(
        default=5, metadata={"help": "generated context prefixes (one per starter word, 10 tokens) besides the bare prompt", "range": (0, 50)},
    )
    template_tokens: int = field(default=10, metadata={"help": "length of each generated context prefix in tokens", "range": (1, 64)})
    batch_size: int = field(
        default=0, metadata={"help": "edits per MEMIT batch; 0 = all at once (batches run one after another)", "range": (0, 1 << 20)},
    )
    stats_samples: int = field(default=200, metadata={"help": "corpus windows for the covariance statistics", "range": (1, 1 << 20)})
    stats_seqlen: int = field(default=512, metadata={"help": "tokens per statistics window (capped at the model's context)", "range": (2, 1 << 20)})
    stats_seed: int = field(default=0, metadata={"help": "seed of the statistics windows (fixed so the cache is shared across runs)"})
    stats_from: Literal["model", "base"] = field(
        default="model",
        metadata={"help": "covariance statistics of the model being edited (model), or of the unmodified base model whatever came before (base: the paper's code, which cached them by model name)"},
    )
    max_batch_tokens: int = field(
        default=4096, metadata={"help": "padded tokens per forward pass in v* optimisation and key computation", "range": (16, 1 << 24)},
    )
    compute_dtype: Literal["auto", "float32", "bfloat16"] = field(
        default="auto",
        metadata={"help": "autocast for v* and keys: auto = bfloat16 on GPU, the model's dtype on CPU; statistics and the solve stay float32/float64"},
    )

    def __post_init__(self) -> None:
        if self.n_edits is not None and self.n_edits < 1:
            raise ConfigError(f"n_edits={self.n_edits}: ask for at least one edit")
        if self.layers is not None:
            if not self.layers:
                raise ConfigError("layers is empty: name at least one decoder layer")
            if any(i < 0 for i in self.layers) or len(set(self.layers)) != len(self.layers):
                raise ConfigError(f"layers={list(self.layers)} must be distinct non-negative layer indices")
        for name in ("mom2_update_weight", "v_lr", "clamp_norm_factor"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name}={v} must be > 0")
        for name in ("v_weight_decay", "kl_factor"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"{name}={v} must be >= 0")
