"""Where AWQ's per-channel scales can be folded exactly, per architecture.

A scale group is a set of projections fed the same input x and the op that produces x:
multiplying the projections' input columns by s and dividing that op's output channels by
s leaves the model's function unchanged. From the architecture spec:

* ``norm``: attn_norm → attn_in (and mlp_in too when the MLP shares the attention's norm, as
  GPT-J); mlp_norm → mlp_in. The norm's weight (and bias) are divided by s; with
  ``norm_offset`` c (gemma's x̂ · (1 + w)), w ← (c + w)/s − c.
* ``v→o``: attn_v's output rows (and bias) → attn_out, when attn_v is its own matrix with as
  many outputs as attn_out has inputs (no grouped-query attention: with fewer key/value
  heads one v channel feeds several o columns, and AWQ's reference code skips it too).
* ``up→down``: mlp_up's output rows (and bias) → mlp_out, in a gated MLP (act(gate) · up).

Elsewhere (a fused qkv matrix, an activation between fc1 and fc2, OPT with its norms after
the blocks) there is no op to fold into and AWQ leaves the scale at 1: the model stays exact.
A group is scaled only when this step quantizes every projection the fold changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch

if TYPE_CHECKING:
    from lmcompose import LM


@dataclass
class ScaleGroup:
    kind: str  # "norm", "v→o" or "up→down"
    source: str  # qualified name of the module whose outputs are divided by s
    members: list[str]  # projections whose input columns are multiplied by s

    @property
    def changed(self) -> list[str]:
        """Projections whose weights the fold changes."""
        return self.members + ([self.source] if self.kind != "norm" else [])


def norms_precede_blocks(lm: LM) -> bool:
    # OPT-350m style models apply their layer norms after attention/MLP (do_layer_norm_before=False)
    return bool(getattr(lm.model.config, "do_layer_norm_before", True))


def scale_groups(lm: LM, index: int, selected: set[str]) -> tuple[list[ScaleGroup], list[str]]:
    """The foldable groups of decoder layer ``index`` among ``selected``, and why others are not."""
    a = lm.arch
    prefix = f"{a.layers}.{index}."
    groups: list[ScaleGroup] = []
    skipped: list[str] = []
    full = lambda rel: prefix + rel  # noqa: E731
    if norms_precede_blocks(lm):
        attn_members = [full(n) for n in a.attn_in] + ([full(n) for n in a.mlp_in] if a.mlp_norm is None else [])
        if a.attn_norm:
            groups.append(ScaleGroup("norm", full(a.attn_norm), attn_members))
        if a.mlp_norm:
            groups.append(ScaleGroup("norm", full(a.mlp_norm), [full(n) for n in a.mlp_in]))
    else:
        skipped.append("norms follow the blocks (do_layer_norm_before=False): no norm to fold into")
    if a.attn_v:
        v, o = lm.weight(full(a.attn_v)), lm.weight(full(a.attn_out))
        if v.shape[0] == o.shape[1]:
            groups.append(ScaleGroup("v→o", full(a.attn_v), [full(a.attn_out)]))
        else:
            skipped.append("v→o: grouped-query attention (v has fewer outputs than o has inputs)")
    if a.mlp_up:
        groups.append(ScaleGroup("up→down", full(a.mlp_up), [full(a.mlp_out)]))
    usable = []
    for grp in groups:
        missing = [n for n in grp.changed if n not in selected]
        if missing:
            skipped.append(
                f"{grp.kind} into {grp.members[0].rsplit('.', 1)[-1]}: {missing[0].rsplit('.', 1)[-1]} is not "
                f"quantized by this step"
            )
        else:
            usable.append(grp)
    return usable, skipped


@torch.no_grad()
def fold_scales(lm: LM, group: ScaleGroup, s: torch.Tensor) -> None:
    """Multiply the members' input columns by ``s`` and divide the source's outputs by ``s``."""
    src = lm.model.get_submodule(group.source)
    if group.kind == "norm":
        c = lm.arch.norm_offset
        weight = cast(torch.Tensor, src.weight).data
        weight.copy_(((weight.float() + c) / s - c).to(weight.dtype))
    else:
        w = lm.weight(group.source)
        w.copy_((w.float() / s.unsqueeze(1)).to(w.dtype))
    bias: torch.Tensor | None = getattr(src, "bias", None)
    if bias is not None:
        bias.data.copy_((bias.data.float() / s).to(bias.dtype))
    for name in group.members:
        w = lm.weight(name)
        w.copy_((w.float() * s.unsqueeze(0)).to(w.dtype))
