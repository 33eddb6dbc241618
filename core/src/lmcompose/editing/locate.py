"""The locate-then-edit core: what MEMIT, AlphaEdit and their kin share.

An editor of this family, for each batch of edits: optimises every edit's target hidden
state v* at the last edit layer (``lmcompose.editing.vstar``), computes each edit layer's
keys (the MLP output projection's input at the subject's last token, averaged over the
context templates), and spreads the residual v* − h over the edit layers, one layer at a
time from the bottom, each layer taking 1/(layers left) of what is still missing. How a
layer turns (keys, residuals) into a weight change is the one thing the methods differ in:
``LocateThenEdit.solve``. The covariance statistics of the keys come from the cached
statistics service (``lmcompose.stats``), of the model being edited or of the base model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from lmcompose.api import Context, Intervention, StepReport, StrengthKnob
from lmcompose.editing.forward import module_values_at
from lmcompose.editing.rows import Row, key_rows, subject_last_index
from lmcompose.editing.vstar import context_templates, optimize_vstar
from lmcompose.errors import ConfigError, DataError

#: the config fields a preset may fill (a config value that is set wins)
VSTAR_HPARAMS = ("layers", "v_num_grad_steps", "v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor")


@dataclass
class LocateEditConfig:
    """Settings every locate-then-edit method shares (names follow the MEMIT code's hparams).
    Fields left at None take the method's preset for the model."""

    n_edits: int | None = field(
        default=None,
        metadata={"help": "edits to apply: the first N of the run's edit set (default: all of them); the strength knob"},
    )
    layers: list[int] | None = field(
        default=None,
        metadata={"help": "decoder layers whose MLP output projection is edited, e.g. 3+4+5+6+7 (default: the model's preset)"},
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
        default=0, metadata={"help": "edits per batch; 0 = all at once (batches run one after another)", "range": (0, 1 << 20)},
    )
    batches: int = field(
        default=0,
        metadata={"help": "split the edits into this many batches applied one after another (sequential editing); 0 = use batch_size",
                  "range": (0, 1 << 20), "since": "0.3"},
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
        if self.batches and self.batch_size:
            raise ConfigError(f"batches={self.batches} and batch_size={self.batch_size}: give one of them (the other stays 0)")
        positive = ("v_lr", "clamp_norm_factor")
        for name in positive:
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name}={v} must be > 0")
        for name in ("v_weight_decay", "kl_factor"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"{name}={v} must be >= 0")


def template_key_mean(k_all: torch.Tensor, n_edits: int, n_templates: int) -> torch.Tensor:
    """Each edit's key from its ``n_templates`` rows (template 0 the bare prompt, the rest the
    generated prefixes): averaged within each group of templates, then across the groups, as
    MEMIT's compute_ks does; the bare prompt weighs 1/2, the generated ones share the other 1/2."""
    k = k_all.view(n_edits, n_templates, -1)
    if n_templates == 1:
        return k[:, 0]
    return 0.5 * (k[:, 0] + k[:, 1:].mean(dim=1))


@torch.no_grad()
def through_post_norm(norm: Any, offset: float, out: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
    """The change of ``out`` (rows, hidden), the input of an RMS norm ``x / rms(x) * (offset
    + weight)``, that moves the norm's output by ``change``, as nearly as the norm allows.

    The norm's outputs are the vectors g * v with rms(v) = 1 (g = offset + weight), so the
    wanted output y = norm(out) + change is reached only up to scale: the new input is
    u = y / g rescaled to out's own rms, whose output is y / rms(u) (y itself when
    rms(u) = 1, as for a change small against the output). Gemma's MLP output passes
    through such a norm before it joins the residual stream (ArchSpec.mlp_post_norm).
    The norm's eps is ignored: it matters only for inputs of mean square near eps."""
    dev = norm.weight.device
    x = out.to(dev).float()
    g = offset + norm.weight.detach().float()
    g = torch.where(g.abs() < 1e-4, torch.full_like(g, 1e-4) * torch.where(g < 0, -1.0, 1.0), g)
    y = norm(x.to(norm.weight.dtype)).float() + change.to(dev).float()
    u = y / g

    def rms(t: torch.Tensor) -> torch.Tensor:
        return t.pow(2).mean(-1, keepdim=True).sqrt()

    return (u * (rms(x) / rms(u).clamp_min(1e-12)) - x).to(device=change.device, dtype=change.dtype)


def iter_batches(n: int, size: int, count: int = 0) -> Iterator[range]:
    """Consecutive batches of ``range(n)``: ``count`` of them as equal as possible when
    ``count`` > 0, else of ``size`` each (0 = one batch)."""
    if count > 0:
        base, extra = divmod(n, count)
        s = 0
        for b in range(count):
            e = s + base + (1 if b < extra else 0)
            yield range(s, e)
            s = e
        return
    size = n if size <= 0 else size
    for s in range(0, n, size):
        yield range(s, min(n, s + size))


def bare_rows(tok: Any, records: Sequence[Any]) -> list[Row]:
    """One row per edit: its prompt, looked up at the subject's last token."""
    return [Row(*subject_last_index(tok, r.prompt, r.prompt.index(r.subject) + len(r.subject)), e)
            for e, r in enumerate(records)]


def edit_keys(lm: Any, records: Sequence[Any], templates: Sequence[str], module_name: str, max_tokens: int,
              compute_dtype: str = "auto") -> torch.Tensor:
    """Each edit's key at ``module_name`` (its input at the subject's last token, averaged over
    the templates as MEMIT's compute_ks): (edits, d_in), float32."""
    k_all = module_values_at(lm, key_rows(lm.tokenizer, records, templates), module_name, "input", max_tokens, compute_dtype)
    return template_key_mean(k_all, len(records), len(templates))


def spread_residual(lm: Any, batch: Sequence[Any], targets: torch.Tensor, templates: Sequence[str], layers: Sequence[int],
                    solve: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor], max_tokens: int,
                    compute_dtype: str = "auto") -> dict[str, float]:
    """Write the v* ``targets`` (edits x hidden, at the output of the last edit layer) into the
    MLP output projections of ``layers`` (MEMIT Alg. 1, lines 7-13): for each layer from the
    bottom, its keys K (d_in, n) and its share R (d_out, n) of the residual still missing go
    to ``solve(layer, K, R)``, whose (d_out, d_in) change is added to the weight. On an
    architecture whose MLP output passes through a norm, R is first turned into the
    projection-output change that moves the norm's output by it (``through_post_norm``).
    Returns |ΔW| per weight."""
    arch = lm.arch
    z = layers[-1]
    bare = bare_rows(lm.tokenizer, batch)
    norms: dict[str, float] = {}
    for i, layer in enumerate(layers):
        name = f"{arch.layers}.{layer}.{arch.mlp_out}"
        keys = edit_keys(lm, batch, templates, name, max_tokens, compute_dtype)
        # where the last edit layer's output stands now, after the layers below were edited
        cur = module_values_at(lm, bare, f"{arch.layers}.{z}", "output", max_tokens, compute_dtype)
        resid = (targets - cur).T / (len(layers) - i)  # spread over the remaining layers
        with lm.onloaded(f"{arch.layers}.{layer}"):  # an offloaded model: this layer's weights, stored back after
            if arch.mlp_post_norm:  # the residual moves by norm(out + d) - norm(out), not by d
                out = module_values_at(lm, bare, name, "output", max_tokens, compute_dtype)
                norm = lm.model.get_submodule(f"{arch.layers}.{layer}.{arch.mlp_post_norm}")
                resid = through_post_norm(norm, arch.norm_offset, out, resid.T).T
            delta = solve(layer, keys.T, resid)
            w = lm.weight(name)
            with torch.no_grad():
                w.add_(delta.to(device=w.device, dtype=w.dtype))
        norms[name] = float(delta.norm())
    return norms


@dataclass(frozen=True)
class Preset:
    """A method's published or searched hyperparameters for one model, matched by shape."""

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    values: dict[str, Any]


#: families whose optimisation settings follow EasyEdit's Llama values (clamp 4, decay 1e-3)
LLAMA_LIKE = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma2", "gemma"})


def model_shape(lm: Any) -> tuple[str, int, int, int]:
    """(model_type, decoder layers, hidden size, MLP width d_ff) of ``lm``; shapes only, so an
    offloaded model's meta weights are fine."""
    from lmcompose.models.arch import weight_matrix

    cfg = lm.model.config
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    d_ff = weight_matrix(lm.model.get_submodule(f"{lm.arch.layers}.0.{lm.arch.mlp_out}")).shape[1]
    return str(cfg.model_type), int(layers), int(hidden), int(d_ff)


def rule_layers(num_layers: int) -> list[int]:
    """The edit layers for a model without a preset: ``max(1, round(0.18 L))`` consecutive
    layers from ``round(0.12 L)`` (GPT-J: 3-7, Llama-2-7B: 4-9, a 2-layer model: layer 0),
    early-to-middle MLP layers, where causal tracing finds subject recall."""
    first = round(0.12 * num_layers)
    count = max(1, round(0.18 * num_layers))
    first = min(first, num_layers - count)
    return list(range(first, first + count))


def match_preset(lm: Any, presets: Sequence[Preset], rule: Callable[[int, str, int], dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """(where the values come from, the values) for ``lm``: the preset of its shape, else
    ``rule(num_layers, model_type, d_ff)``."""
    model_type, layers, hidden, d_ff = model_shape(lm)
    for p in presets:
        if (p.model_type, p.num_layers, p.hidden_size) == (model_type, layers, hidden):
            return f"preset {p.name}", dict(p.values)
    return f"rule for {layers} layers, d_ff {d_ff}", rule(layers, model_type, d_ff)


class LocateThenEdit(Intervention):
    """Base of locate-then-edit editors (MEMIT, AlphaEdit): v*, keys and the spread are shared;
    a subclass names its ``HPARAMS`` (config fields its presets fill), ``preset_for(lm)``,
    and ``solve``; it may keep state across the batches of one step (``begin``, ``end_batch``).

    Lifecycle: ``apply`` takes the first ``n_edits`` of ``ctx.edits``, computes the key
    covariance of every edit layer (cached), calls ``begin``, then for each batch optimises
    v* and spreads it (``spread_residual`` with ``solve``) and calls ``end_batch``. There is
    no ``project``: an edit is not a constraint to restore."""

    kind = "edit"
    strength = StrengthKnob("n_edits", 1, 100000, integer=True)
    HPARAMS: tuple[str, ...] = VSTAR_HPARAMS

    @property
    def needs_base_model(self) -> bool:  # type: ignore[override]
        return self.config.stats_from == "base"

    # ------------------------------------------------------------------ method-specific
    def preset_for(self, lm: Any) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def begin(self, lm: Any, hp: dict[str, Any], covs: dict[int, torch.Tensor], ctx: Context) -> dict[str, Any]:
        """Prepare the method's state for this step (covariances by layer); returns details for the report."""
        return {}

    def solve(self, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        """The (d_out, d_in) change of ``layer``'s projection for keys (d_in, n) and residuals (d_out, n)."""
        raise NotImplementedError

    def end_batch(self, lm: Any, batch: Sequence[Any], templates: Sequence[str], layers: Sequence[int]) -> None:
        """After a batch is written (the weights hold it)."""

    # ------------------------------------------------------------------ shared
    def hparams(self, lm: Any) -> tuple[str, dict[str, Any]]:
        """The hyperparameters for ``lm``: config fields that are set, the preset for the rest."""
        from lmcompose.models.arch import decoder_layers

        where, values = self.preset_for(lm)
        explicit = {k: getattr(self.config, k) for k in self.HPARAMS if getattr(self.config, k) is not None}
        values.update(explicit)
        values["layers"] = sorted(int(i) for i in values["layers"])
        n_layers = len(decoder_layers(lm.model, lm.arch))
        bad = [i for i in values["layers"] if i >= n_layers]
        if bad:
            raise ConfigError(f"step '{self.name}': layers {bad} do not exist; this model has decoder layers 0-{n_layers - 1}")
        return (where if not explicit else f"{where}, overridden: {', '.join(sorted(explicit))}"), values

    def select_records(self, ctx: Context) -> list[Any]:
        c = self.config
        records = list(ctx.edits)
        if not records:
            raise DataError(f"step '{self.name}' needs edit requests: pass --dataset (and --edits N), or use the bundled 'records'")
        if c.n_edits is not None:
            if c.n_edits > len(records):
                raise ConfigError(f"step '{self.name}': n_edits={c.n_edits} but the run has only {len(records)} edits; pass --edits {c.n_edits} or more")
            records = records[: c.n_edits]
        if c.batches > len(records):
            raise ConfigError(f"step '{self.name}': batches={c.batches} but only {len(records)} edits; use at most {len(records)} batches")
        return records

    def apply(self, lm: Any, ctx: Context) -> StepReport:
        from lmcompose.data import calibration_windows
        from lmcompose.stats import second_moments

        c = self.config
        start = time.perf_counter()
        records = self.select_records(ctx)
        source, hp = self.hparams(lm)
        layers = hp["layers"]
        z = layers[-1]
        arch = lm.arch
        out_names = {i: f"{arch.layers}.{i}.{arch.mlp_out}" for i in layers}
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        templates = context_templates(lm, c.context_templates, c.template_tokens, ctx.seed)
        timings["templates_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        seqlen = min(c.stats_seqlen, lm.max_positions)
        windows = calibration_windows(lm.tokenizer, c.stats_samples, seqlen, c.stats_seed, ctx)
        stats_lm = lm
        if c.stats_from == "base":
            if ctx.base_model is not None:
                stats_lm = ctx.base_model
            else:
                ctx.note(f"{self.name}: stats_from=base but no base model in the context (apply() called directly); "
                         "statistics from the model being edited")
        stats = second_moments(stats_lm, list(out_names.values()), windows, ctx.stats_dir(), progress=ctx.progress,
                               description=f"{self.name} covariance statistics")
        timings["stats_s"] = time.perf_counter() - t0
        stats_cached = all(s["cached"] for s in stats.values())
        t0 = time.perf_counter()
        method_details = self.begin(lm, hp, {i: stats[out_names[i]]["mom2"] for i in layers}, ctx)
        if method_details:
            timings["prepare_s"] = time.perf_counter() - t0

        vstar_steps: list[int] = []
        final_loss: list[float] = []
        first_loss: list[float] = []
        forward_steps = 0
        tokens_first = 0
        update_norms: dict[str, float] = {}
        timings["vstar_s"] = 0.0
        timings["update_s"] = 0.0
        batches = list(iter_batches(len(records), c.batch_size, c.batches))
        for b, idx in enumerate(batches):
            batch = [records[i] for i in idx]
            t0 = time.perf_counter()
            with ctx.progress.task(f"{self.name} v* ({len(batch)} edits)", int(hp["v_num_grad_steps"])) as advance:
                vs = optimize_vstar(lm, batch, templates, z, hp, c.early_stop_loss, c.max_batch_tokens,
                                    c.compute_dtype, advance)
            timings["vstar_s"] += time.perf_counter() - t0
            vstar_steps += vs.steps
            first_loss += vs.first_loss
            final_loss += vs.final_loss
            forward_steps += vs.forward_steps
            tokens_first = max(tokens_first, vs.tokens_first_step)

            t0 = time.perf_counter()
            norms = self.write(lm, batch, vs.target, templates, layers)
            self.end_batch(lm, batch, templates, layers)
            for name, value in norms.items():
                update_norms[name if len(batches) == 1 else f"{name}#batch{b}"] = value
            timings["update_s"] += time.perf_counter() - t0

        rep = self.report(
            n_edits=len(records), layers=layers, hparams=hp, hparams_source=source, batches=len(batches),
            templates=templates, stats_tokens=int(next(iter(stats.values()))["tokens"]), stats_cached=stats_cached,
            stats_fingerprints={n: s["fingerprint"] for n, s in stats.items()},
            vstar_forward_steps=forward_steps, vstar_steps_mean=sum(vstar_steps) / len(vstar_steps),
            vstar_steps_max=max(vstar_steps), vstar_tokens_first_step=tokens_first,
            vstar_loss_first=sum(first_loss) / len(first_loss), vstar_loss_final=sum(final_loss) / len(final_loss),
            vstar_converged=sum(1 for x in final_loss if x < c.early_stop_loss),
            update_norms=update_norms, **method_details, **{k: round(v, 3) for k, v in timings.items()},
        )
        rep.elapsed_s = time.perf_counter() - start
        return rep

    def write(self, lm: Any, batch: Sequence[Any], targets: torch.Tensor, templates: Sequence[str],
              layers: Sequence[int]) -> dict[str, float]:
        """Spread one batch's v* targets over ``layers`` with this method's ``solve``."""
        c = self.config
        return spread_residual(lm, batch, targets, templates, layers, self.solve, c.max_batch_tokens, c.compute_dtype)
