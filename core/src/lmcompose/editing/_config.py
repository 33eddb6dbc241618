"""The settings every locate-then-edit editor shares, presets by model shape, and the rule
for a model without one. Imports no torch: a study is validated without it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Literal, TypeVar, Union

from lmcompose.errors import ConfigError, DataError

#: a hyperparameter's value in a preset or a config (``layers``: a list of layer indices)
HParamValue = Union[int, float, str, bool, list[int], tuple[int, ...], None]
T = TypeVar("T")


def check_edit_selection(n_edits: int | None, layers: list[int] | None) -> None:
    """The ``n_edits`` and ``layers`` fields every editor's config has: at least one edit,
    distinct non-negative layers (None = the method's default)."""
    if n_edits is not None and n_edits < 1:
        raise ConfigError(f"n_edits={n_edits}: ask for at least one edit")
    if layers is not None:
        if not layers:
            raise ConfigError("layers is empty: name at least one decoder layer")
        if any(i < 0 for i in layers) or len(set(layers)) != len(layers):
            raise ConfigError(f"layers={list(layers)} must be distinct non-negative layer indices")


def check_layers_exist(step: str, layers: list[int], n_layers: int) -> None:
    """Refuse edit layers the model does not have, naming its range."""
    bad = [i for i in layers if i >= n_layers]
    if bad:
        raise ConfigError(f"step '{step}': layers {bad} do not exist; this model has decoder layers 0-{n_layers - 1}")


def select_edits(step: str, edits: Sequence[T], n_edits: int | None, batches: int) -> list[T]:
    """The first ``n_edits`` of the run's edits (all when None), refusing none at all, more
    than the run has, or more ``batches`` than edits."""
    records = list(edits)
    if not records:
        raise DataError(
            f"step '{step}' needs edit requests: pass --dataset (and --edits N), or use the bundled 'records'"
        )
    if n_edits is not None:
        if n_edits > len(records):
            raise ConfigError(
                f"step '{step}': n_edits={n_edits} but the run has only {len(records)} edits; pass --edits {n_edits} "
                f"or more"
            )
        records = records[:n_edits]
    if batches > len(records):
        raise ConfigError(
            f"step '{step}': batches={batches} but only {len(records)} edits; use at most {len(records)} batches"
        )
    return records


@dataclass(frozen=True)
class VStarSettings:
    """The v* optimisation's hyperparameters, every value set (MEMIT's compute_z)."""

    v_num_grad_steps: int
    v_lr: float
    v_weight_decay: float
    clamp_norm_factor: float
    kl_factor: float

    @classmethod
    def of(cls, values: VStarSettings | Mapping[str, HParamValue]) -> VStarSettings:
        """These settings from resolved hyperparameters or a mapping with (at least) their names."""
        if isinstance(values, VStarSettings):
            return values
        missing = [f.name for f in fields(cls) if f.name not in values]
        if missing:
            raise ConfigError(
                f"v* settings lack {', '.join(missing)}: give every one of {', '.join(f.name for f in fields(cls))}"
            )
        return cls(**{f.name: values[f.name] for f in fields(cls)})  # type: ignore[arg-type]  # as given


H = TypeVar("H", bound="EditHParams")


@dataclass(frozen=True)
class EditHParams(VStarSettings):
    """A locate-then-edit method's hyperparameters for one model, resolved: the preset's
    values with the config's explicit ones over them. A method adds its own fields in a
    subclass (MEMIT: ``mom2_update_weight``); ``from_values`` checks and converts them."""

    layers: tuple[int, ...]

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The config fields a preset may fill, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_values(cls: type[H], values: Mapping[str, HParamValue], where: str) -> H:
        """Resolved hyperparameters from a preset's values merged with the config's; ``where``
        names their source in the message for a missing or unknown one."""
        names = cls.names()
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"{where}: unknown hyperparameters {', '.join(unknown)}; known: {', '.join(names)}")
        optional = {f.name for f in fields(cls) if f.default is None}
        missing = [n for n in names if values.get(n) is None and n not in optional]
        if missing:
            raise ConfigError(f"{where}: no value for {', '.join(missing)}; set it in the step's config")
        out: dict[str, HParamValue] = {}
        for f in fields(cls):
            v = values.get(f.name)
            if f.name == "layers":
                if not isinstance(v, list | tuple):
                    raise ConfigError(f"{where}: layers={v!r} must be a list of decoder layer indices")
                out[f.name] = tuple(sorted(int(i) for i in v))
            elif v is None:
                out[f.name] = None
            elif isinstance(v, list | tuple):
                raise ConfigError(f"{where}: {f.name}={v!r} must be a single value, not a list")
            elif str(f.type).startswith("int"):
                out[f.name] = int(v)
            elif str(f.type).startswith("float"):
                out[f.name] = float(v)
            else:
                out[f.name] = v
        return cls(**out)  # type: ignore[arg-type]  # each value converted to its field's type above

    def as_dict(self) -> dict[str, object]:
        """Plain values for a report (layers as a list)."""
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d


#: the config fields a preset may fill (a config value that is set wins)
VSTAR_HPARAMS = EditHParams.names()


@dataclass
class LocateEditConfig:
    """Settings every locate-then-edit method shares (names follow the MEMIT code's hparams).
    Fields left at None take the method's preset for the model."""

    n_edits: int | None = field(
        default=None,
        metadata={
            "help": "edits to apply: the first N of the run's edit set (default: all of them); the strength knob"
        },
    )
    layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "decoder layers whose MLP output projection is edited, e.g. 3+4+5+6+7 (default: the model's preset)"
        },
    )
    v_num_grad_steps: int | None = field(
        default=None, metadata={"help": "most optimisation steps for v* (MEMIT: 25)", "range": (1, 10000)}
    )
    v_lr: float | None = field(default=None, metadata={"help": "Adam learning rate for v* (MEMIT: 0.5)"})
    v_weight_decay: float | None = field(
        default=None, metadata={"help": "weight on |delta| / |h|^2 in the v* loss (MEMIT GPT-J: 0.5)"}
    )
    clamp_norm_factor: float | None = field(
        default=None,
        metadata={"help": "|delta| is clamped to this times |h| at the edited position (MEMIT GPT-J: 0.75)"},
    )
    kl_factor: float | None = field(
        default=None, metadata={"help": "weight of the KL term on '{subject} is a' (MEMIT: 0.0625)"}
    )
    early_stop_loss: float = field(
        default=5e-2, metadata={"help": "an edit stops optimising once its v* loss is below this"}
    )
    context_templates: int = field(
        default=5,
        metadata={
            "help": "generated context prefixes (one per starter word, 10 tokens) besides the bare prompt",
            "range": (0, 50),
        },
    )
    template_tokens: int = field(
        default=10, metadata={"help": "length of each generated context prefix in tokens", "range": (1, 64)}
    )
    batch_size: int = field(
        default=0,
        metadata={"help": "edits per batch; 0 = all at once (batches run one after another)", "range": (0, 1 << 20)},
    )
    batches: int = field(
        default=0,
        metadata={
            "help": "split the edits into this many batches applied one after another (sequential editing); 0 = use "
            "batch_size",
            "range": (0, 1 << 20),
            "since": "0.3",
        },
    )
    stats_samples: int = field(
        default=200, metadata={"help": "corpus windows for the covariance statistics", "range": (1, 1 << 20)}
    )
    stats_seqlen: int = field(
        default=512,
        metadata={"help": "tokens per statistics window (capped at the model's context)", "range": (2, 1 << 20)},
    )
    stats_seed: int = field(
        default=0, metadata={"help": "seed of the statistics windows (fixed so the cache is shared across runs)"}
    )
    stats_from: Literal["model", "base"] = field(
        default="model",
        metadata={
            "help": "covariance statistics of the model being edited (model), or of the unmodified base model "
            "whatever came before (base: the paper's code, which cached them by model name)"
        },
    )
    max_batch_tokens: int = field(
        default=4096,
        metadata={
            "help": "padded tokens per forward pass in v* optimisation and key computation",
            "range": (16, 1 << 24),
        },
    )
    compute_dtype: Literal["auto", "float32", "bfloat16"] = field(
        default="auto",
        metadata={
            "help": "autocast for v* and keys: auto = bfloat16 on GPU, the model's dtype on CPU; statistics and the "
            "solve stay float32/float64"
        },
    )

    def __post_init__(self) -> None:
        check_edit_selection(self.n_edits, self.layers)
        if self.batches and self.batch_size:
            raise ConfigError(
                f"batches={self.batches} and batch_size={self.batch_size}: give one of them (the other stays 0)"
            )
        positive = ("v_lr", "clamp_norm_factor")
        for name in positive:
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name}={v} must be > 0")
        for name in ("v_weight_decay", "kl_factor"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"{name}={v} must be >= 0")


@dataclass(frozen=True)
class Preset:
    """A method's published or searched hyperparameters for one model, matched by shape."""

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    values: dict[str, HParamValue]


#: families whose optimisation settings follow EasyEdit's Llama values (clamp 4, decay 1e-3)
LLAMA_LIKE = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma2", "gemma"})


def rule_layers(num_layers: int) -> list[int]:
    """The edit layers for a model without a preset: ``max(1, round(0.18 L))`` consecutive
    layers from ``round(0.12 L)`` (GPT-J: 3-7, Llama-2-7B: 4-9, a 2-layer model: layer 0),
    early-to-middle MLP layers, where causal tracing finds subject recall."""
    first = round(0.12 * num_layers)
    count = max(1, round(0.18 * num_layers))
    first = min(first, num_layers - count)
    return list(range(first, first + count))
