"""The locate-then-edit core: what MEMIT, AlphaEdit and their kin share.

An editor of this family, for each batch of edits: optimises every edit's target hidden
state v* at the last edit layer (``lmcompose.editing._vstar``), computes each edit layer's
keys (the MLP output projection's input at the subject's last token, averaged over the
context templates), and spreads the residual v* − h over the edit layers, one layer at a
time from the bottom, each layer taking 1/(layers left) of what is still missing. How a
layer turns (keys, residuals) into a weight change is the one thing the methods differ in:
``LocateThenEdit.solve``. The covariance statistics of the keys come from the cached
statistics service (``lmcompose.stats``), of the model being edited or of the base model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, cast

import torch

from lmcompose.api import EditRecord
from lmcompose.editing._config import HParamValue, Preset
from lmcompose.editing._forward import module_values_at
from lmcompose.editing._rows import Row, key_rows, subject_last_index

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lmcompose.models.handle import LM


def template_key_mean(k_all: torch.Tensor, n_edits: int, n_templates: int) -> torch.Tensor:
    """Each edit's key from its ``n_templates`` rows (template 0 the bare prompt, the rest the
    generated prefixes): averaged within each group of templates, then across the groups, as
    MEMIT's compute_ks does; the bare prompt weighs 1/2, the generated ones share the other 1/2."""
    k = k_all.view(n_edits, n_templates, -1)
    if n_templates == 1:
        return k[:, 0]
    return 0.5 * (k[:, 0] + k[:, 1:].mean(dim=1))


@torch.no_grad()
def through_post_norm(norm: torch.nn.Module, offset: float, out: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
    """The change of ``out`` (rows, hidden), the input of an RMS norm ``x / rms(x) * (offset
    + weight)``, that moves the norm's output as close as it can go to ``norm(out) + change``.

    The norm's outputs are exactly the vectors g ⊙ v with rms(v) = 1 (g = offset + weight).
    For a wanted output y the nearest of them (least squares) has, by a Lagrange multiplier
    μ, v_j = g_j y_j / (g_j² + μ), with μ > −min g_j² the unique value that gives rms(v) = 1
    (found by bisection, float64); an output the norm can give is met exactly (μ = 0). The
    new input is v at out's own rms, so the weight change stays as small as the norm allows.
    Gemma's MLP output passes through such a norm before it joins the residual stream
    (ArchSpec.mlp_post_norm). The norm's eps is ignored: it matters only for inputs of mean
    square near eps.

    (Before lmcompose 0.3 this divided y by g and rescaled, y / rms(y / g): exact for an
    output the norm can give, but for a large change on Gemma-3-270M, whose g has entries
    near 0, those few coordinates took all of v and the MLP's other output was erased.)"""
    weight = cast(torch.Tensor, norm.weight)
    dev = weight.device
    x = out.to(dev).double()
    g = (offset + weight.detach().double()).expand_as(x)
    y = norm(x.to(weight.dtype)).double() + change.to(dev).double()
    d = x.shape[-1]

    def v_of(mu: torch.Tensor) -> torch.Tensor:
        return g * y / (g * g + mu)

    def excess(mu: torch.Tensor) -> torch.Tensor:  # |v|² - d, decreasing in mu above -min g²
        return v_of(mu).pow(2).sum(-1, keepdim=True) - d

    floor = -(g * g).min(dim=-1, keepdim=True).values
    lo = floor + 1e-12 * (1 + floor.abs())
    hi = torch.ones_like(lo)
    while bool((excess(hi) > 0).any()):
        hi = torch.where(excess(hi) > 0, hi * 4 + 1, hi)
    for _ in range(200):
        mid = (lo + hi) / 2
        above = excess(mid) > 0
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    v = v_of((lo + hi) / 2)
    v = v / v.pow(2).mean(-1, keepdim=True).sqrt()  # rms(v) = 1 exactly

    def rms(t: torch.Tensor) -> torch.Tensor:
        return t.pow(2).mean(-1, keepdim=True).sqrt()

    return (v * rms(x) - x).to(device=change.device, dtype=change.dtype)


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


def bare_rows(tok: PreTrainedTokenizerBase, records: Sequence[EditRecord]) -> list[Row]:
    """One row per edit: its prompt, looked up at the subject's last token."""
    return [
        Row(*subject_last_index(tok, r.prompt, r.prompt.index(r.subject) + len(r.subject)), e)
        for e, r in enumerate(records)
    ]


def edit_keys(
    lm: LM,
    records: Sequence[EditRecord],
    templates: Sequence[str],
    module_name: str,
    max_tokens: int,
    compute_dtype: str = "auto",
) -> torch.Tensor:
    """Each edit's key at ``module_name`` (its input at the subject's last token, averaged over
    the templates as MEMIT's compute_ks): (edits, d_in), float32."""
    k_all = module_values_at(
        lm, key_rows(lm.tokenizer, records, templates), module_name, "input", max_tokens, compute_dtype
    )
    return template_key_mean(k_all, len(records), len(templates))


def spread_residual(
    lm: LM,
    batch: Sequence[EditRecord],
    targets: torch.Tensor,
    templates: Sequence[str],
    layers: Sequence[int],
    solve: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
    max_tokens: int,
    compute_dtype: str = "auto",
) -> dict[str, float]:
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


def model_shape(lm: LM) -> tuple[str, int, int, int]:
    """(model_type, decoder layers, hidden size, MLP width d_ff) of ``lm``; shapes only, so an
    offloaded model's meta weights are fine."""
    from lmcompose.models.arch import weight_matrix

    cfg = lm.model.config
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    if layers is None or hidden is None:
        raise ValueError(
            f"{cfg.model_type}: its config gives no layer count (num_hidden_layers, n_layer) or hidden size "
            "(hidden_size, n_embd); the editors' presets are matched by them"
        )
    d_ff = weight_matrix(lm.model.get_submodule(f"{lm.arch.layers}.0.{lm.arch.mlp_out}")).shape[1]
    return str(cfg.model_type), int(layers), int(hidden), int(d_ff)


def match_preset(
    lm: LM, presets: Sequence[Preset], rule: Callable[[int, str, int], dict[str, HParamValue]]
) -> tuple[str, dict[str, HParamValue]]:
    """(where the values come from, the values) for ``lm``: the preset of its shape, else
    ``rule(num_layers, model_type, d_ff)``."""
    model_type, layers, hidden, d_ff = model_shape(lm)
    for p in presets:
        if (p.model_type, p.num_layers, p.hidden_size) == (model_type, layers, hidden):
            return f"preset {p.name}", dict(p.values)
    return f"rule for {layers} layers, d_ff {d_ff}", rule(layers, model_type, d_ff)
