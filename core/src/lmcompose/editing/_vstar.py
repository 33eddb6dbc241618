"""v*: the target hidden state of each edit at the last edit layer (MEMIT compute_z), batched,
and the context templates it is optimised over. See lmcompose.editing for the batching."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch

from lmcompose.api import EditRecord
from lmcompose.editing._config import HParamValue, VStarSettings
from lmcompose.editing._forward import SplitGroup, Tail, compute_context, split_forward
from lmcompose.editing._rows import pad_id, pad_right, prefix_groups, rewrite_rows, target_ids

if TYPE_CHECKING:
    from lmcompose.models.handle import LM

STARTERS = ("The", "Therefore", "Because", "I", "You")


@torch.no_grad()
def context_templates(lm: LM, n: int, length: int, seed: int) -> list[str]:
    """``["{}"]`` plus ``n`` prefixes sampled (top-k 5, seeded) from the model itself, each
    ``length`` tokens long, as ``"<text>. {}"`` (MEMIT's CONTEXT_TEMPLATES_CACHE). Starters
    of equal token length are sampled together."""
    tok = lm.tokenizer
    gen = torch.Generator().manual_seed(seed)
    special = set(tok.all_special_ids)
    starts = [list(tok(STARTERS[k % len(STARTERS)], add_special_tokens=True).input_ids) for k in range(n)]
    texts: dict[int, str] = {}
    by_len: dict[int, list[int]] = {}
    for k, ids in enumerate(starts):
        by_len.setdefault(len(ids), []).append(k)
    for _, ks in sorted(by_len.items()):
        seqs = torch.tensor([starts[k] for k in ks])
        n_new = max(0, length - sum(1 for i in starts[ks[0]] if i not in special))
        for _ in range(n_new):
            logits = lm.model(seqs.to(lm.device), use_cache=False).logits[:, -1].float().cpu()
            top = torch.topk(logits, 5, dim=-1)
            pick = torch.multinomial(torch.softmax(top.values, dim=-1), 1, generator=gen)
            seqs = torch.cat([seqs, top.indices.gather(1, pick)], dim=1)
        for j, k in enumerate(ks):
            texts[k] = cast(str, tok.decode(seqs[j].tolist(), skip_special_tokens=True))  # one sequence: one text
    return ["{}"] + [texts[k].replace("{", " ").replace("}", " ") + ". {}" for k in range(n)]


# ----------------------------------------------------------------------------------------
# v*: the target residual for each edit
# ----------------------------------------------------------------------------------------


def kl_term(now: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    """KL(p_now ‖ p_init) per edit, over the vocabulary, from log-probabilities: MEMIT's
    compute_z (``kl_div(init, now, log_target=True)``, which is KL of ``now`` from ``init``)."""
    return (now.exp() * (now - init)).sum(-1)


@dataclass
class VStarResult:
    target: torch.Tensor  # (edits, hidden) float32: h + delta
    init: torch.Tensor  # (edits, hidden): h at the subject's last token, bare prompt
    steps: list[int]  # gradient steps each edit took
    first_loss: list[float]
    final_loss: list[float]
    final_nll: list[float]
    forward_steps: int  # loss evaluations of the batch (the outer iterations run)
    tokens_first_step: int


@dataclass
class _PrefixGroup:
    """One prefix group of rewrite rows (:func:`prefix_groups`): the prefix run once and the
    residual below the edit over the suffixes (``split``), each row's edit and whether it is a
    KL row, and each target token's row, suffix position, id and edit."""

    split: SplitGroup
    edit: torch.Tensor
    kl: torch.Tensor
    t_row: torch.Tensor
    t_pos: torch.Tensor
    t_id: torch.Tensor
    t_edit: torch.Tensor


def row_adam(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    t: torch.Tensor,
    lr: float,
    active: torch.Tensor,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> None:
    """torch.optim.Adam's update, per row, on the ``active`` rows only."""
    a = active
    t[a] += 1
    m[a] = b1 * m[a] + (1 - b1) * g[a]
    v[a] = b2 * v[a] + (1 - b2) * g[a] * g[a]
    bc1 = 1 - b1 ** t[a].unsqueeze(1)
    bc2 = 1 - b2 ** t[a].unsqueeze(1)
    denom = (v[a].sqrt() / bc2.sqrt()) + eps
    p[a] = p[a] - (lr / bc1) * m[a] / denom


def optimize_vstar(
    lm: LM,
    records: Sequence[EditRecord],
    templates: Sequence[str],
    z: int,
    hp: VStarSettings | Mapping[str, HParamValue],
    early_stop: float,
    max_tokens: int,
    compute_dtype: str = "auto",
    advance: Callable[[int], None] | None = None,
) -> VStarResult:
    """MEMIT compute_z for every edit at once (see the module docstring); ``hp`` gives the
    optimisation's settings (resolved hyperparameters, or a mapping with their names)."""
    settings = VStarSettings.of(hp)
    tok = lm.tokenizer
    rows = rewrite_rows(tok, records, templates)
    n_edits = len(records)
    n_rewrite = len(templates)
    pad = pad_id(tok)
    groups = prefix_groups(rows, max_tokens)
    tail = Tail(lm, z)
    dev = lm.device

    # per group: the prefix run once; the fixed residual below the edit over the suffixes
    # (the lookup token is suffix position 0); which edit; where the targets are
    cached: list[_PrefixGroup] = []
    for group in groups:
        p = rows[group[0]].lookup
        prefix = torch.tensor([rows[i].ids[:p] for i in group], dtype=torch.long)
        suffix = pad_right([rows[i].ids[p:] for i in group], pad)
        split = split_forward(lm, z, prefix, suffix, compute_dtype)
        split.h0 = split.h0.float()
        tr, tp, tt, te = [], [], [], []
        for k, i in enumerate(group):
            r = rows[i]
            for pos, tid in zip(r.target_positions, r.target_ids, strict=True):
                tr.append(k)
                tp.append(pos - p)
                tt.append(tid)
                te.append(r.edit)
        cached.append(
            _PrefixGroup(
                split=split,
                edit=torch.tensor([rows[i].edit for i in group], device=dev),
                kl=torch.tensor([rows[i].kl for i in group], device=dev),
                t_row=torch.tensor(tr, dtype=torch.long, device=dev),
                t_pos=torch.tensor(tp, dtype=torch.long, device=dev),
                t_id=torch.tensor(tt, dtype=torch.long, device=dev),
                t_edit=torch.tensor(te, dtype=torch.long, device=dev),
            )
        )
    # h at the subject's last token of the bare prompt ("{}" template, row e * n_rewrite)
    init = torch.empty(n_edits, cached[0].split.h0.shape[-1], device=dev)
    for g, group in zip(cached, groups, strict=True):
        for k, i in enumerate(group):
            r = rows[i]
            if not r.kl and i % n_rewrite == 0:
                init[r.edit] = g.split.h0[k, 0]
    target_len = torch.tensor([len(target_ids(tok, r)) for r in records], dtype=torch.float32, device=dev)
    init_norm = init.norm(dim=1)

    delta = torch.zeros_like(init)
    m, v = torch.zeros_like(init), torch.zeros_like(init)
    t = torch.zeros(n_edits, device=dev)
    active = torch.ones(n_edits, dtype=torch.bool, device=dev)
    kl_init: torch.Tensor | None = None
    steps = [0] * n_edits
    first_loss: list[float] = [0.0] * n_edits
    final_loss: list[float] = [0.0] * n_edits
    final_nll: list[float] = [0.0] * n_edits
    forward_steps = 0
    tokens_first = 0
    n_steps = settings.v_num_grad_steps
    params = [param for param in lm.model.parameters() if param.requires_grad]
    for param in params:
        param.requires_grad_(False)
    try:
        for it in range(n_steps):
            d = delta.clone().requires_grad_(True)
            nll = torch.zeros(n_edits, device=dev)
            kl_logp: dict[int, torch.Tensor] = {}
            for g in cached:
                keep = active[g.edit]
                if not bool(keep.any()):
                    continue
                sel = keep.nonzero().squeeze(1)
                h0 = g.split.h0[sel]
                width = h0.shape[1]
                if it == 0:
                    tokens_first += int(sel.numel()) * width
                add = torch.zeros_like(h0)
                add[:, 0] = d[g.edit[sel]]  # the lookup token is suffix position 0
                # rows of this subset: new index of each kept row
                new_index = torch.full((len(g.edit),), -1, dtype=torch.long, device=dev)
                new_index[sel] = torch.arange(len(sel), device=dev)
                t_keep = keep[g.t_row]
                kl_rows = g.kl[sel].nonzero().squeeze(1)
                q_rows = torch.cat([new_index[g.t_row[t_keep]], kl_rows])
                q_pos = torch.cat([g.t_pos[t_keep], torch.zeros_like(kl_rows)])
                whole = len(sel) == len(g.edit)
                with compute_context(lm, compute_dtype):
                    logits = tail.logits((h0 + add).to(h0.dtype), q_rows, q_pos, g.split, None if whole else sel)
                logp = torch.log_softmax(logits.float(), dim=-1)
                n_t = int(t_keep.sum())
                tok_logp = logp[torch.arange(n_t, device=dev), g.t_id[t_keep]]
                t_edit = g.t_edit[t_keep]
                nll = nll.index_add(0, t_edit, -tok_logp / (target_len[t_edit] * n_rewrite))
                for j, e in enumerate(g.edit[sel][kl_rows].tolist()):
                    kl_logp[e] = logp[n_t + j]
            edits_now = active.nonzero().squeeze(1).tolist()
            kl_now = torch.stack([kl_logp[e] for e in edits_now])
            if kl_init is None:
                kl_init = torch.zeros(n_edits, kl_now.shape[-1], device=dev)
                kl_init[edits_now] = kl_now.detach()
            kl = kl_term(kl_now, kl_init[edits_now])
            idx = torch.tensor(edits_now, device=dev)
            wd = settings.v_weight_decay * d[idx].norm(dim=1) / init_norm[idx] ** 2
            loss = nll[idx] + settings.kl_factor * kl + wd
            forward_steps += 1
            values = loss.detach().cpu().tolist()
            nll_values = nll[idx].detach().cpu().tolist()
            for e, lv, nv in zip(edits_now, values, nll_values, strict=True):
                if it == 0:
                    first_loss[e] = lv
                final_loss[e] = lv
                final_nll[e] = nv
            done = loss.detach() < early_stop
            if it == n_steps - 1:
                break
            go = ~done
            if not bool(go.any()):
                active[idx] = False
                break
            loss[go].sum().backward()
            assert d.grad is not None  # d requires grad and the loss depends on it
            grad = d.grad.detach()
            now = torch.zeros(n_edits, dtype=torch.bool, device=dev)
            now[idx[go]] = True
            row_adam(delta, grad, m, v, t, settings.v_lr, now)
            max_norm = settings.clamp_norm_factor * init_norm
            norms = delta.norm(dim=1)
            scale = torch.where(norms > max_norm, max_norm / norms.clamp_min(1e-12), torch.ones_like(norms))
            delta = delta * scale.unsqueeze(1)
            for e in idx[go].tolist():
                steps[e] += 1
            active[idx[done]] = False
            if advance is not None:
                advance(1)
    finally:
        for param in params:
            param.requires_grad_(True)
    return VStarResult(
        (init + delta).detach().float().cpu(),
        init.detach().float().cpu(),
        steps,
        first_loss,
        final_loss,
        final_nll,
        forward_steps,
        tokens_first,
    )
