"""MEMIT's pieces, batched: context templates, v* optimisation, keys, and the closed-form update.

Follows the MEMIT code (github.com/kmeng01/memit: compute_z.py, compute_ks.py, memit_main.py)
step by step; the differences are only in how the work is batched:

* v* is optimised for all edits of a batch at once: one (edits x hidden) delta, a summed
  loss (each edit's rows depend only on its own delta, so the gradients are the per-edit
  ones), Adam kept per row (the same update as one Adam per edit), and an edit whose loss
  falls below the threshold stops and leaves the batch.
* delta is added to the residual stream at the output of the last edit layer, so the layers
  below it cannot change during the optimisation: their output is computed once, and each
  step runs only the layers above it, on the positions that need logits.
* nothing before the subject's last token depends on delta (attention is causal), so each
  sequence is split there: the prefix runs once, without gradient, and its keys and values
  are kept for every layer above the edit; each step runs only the suffix (the subject's
  last token onward) through those layers, attending to the kept prefix. On CounterFact
  with MEMIT's context templates the suffix is about a third of the tokens.
* sequences are grouped by prefix length and their suffixes right-padded; with causal
  attention the real tokens never see the padding, so no attention mask is needed and each
  group reuses the layer arguments (rotary embeddings, masks) of one of its sequences.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lmcompose.api import EditRecord
from lmcompose.calibration import StopForward, call_layer, layer_call_arguments
from lmcompose.metrics.edits import target_text
from lmcompose.models.arch import decoder_layers, get_path

STARTERS = ("The", "Therefore", "Because", "I", "You")


# ----------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------


def subject_last_index(tok: Any, text: str, subject_end: int) -> tuple[list[int], int]:
    """Token ids of ``text`` (with the tokenizer's special tokens) and the index of the token
    holding the subject's last character (``subject_end`` is a character offset)."""
    if getattr(tok, "is_fast", False):
        enc = tok(text, add_special_tokens=True, return_offsets_mapping=True)
        ids, offsets = enc.input_ids, enc.offset_mapping
        last = None
        for i, (a, b) in enumerate(offsets):
            if b > a and a < subject_end:
                last = i
        if last is not None:
            return list(ids), last
    ids = tok(text, add_special_tokens=True).input_ids
    return list(ids), len(tok(text[:subject_end], add_special_tokens=True).input_ids) - 1


@dataclass
class Row:
    """One sequence of the v* batch."""

    ids: list[int]
    lookup: int
    edit: int
    kl: bool = False
    target_positions: list[int] = field(default_factory=list)  # logits here predict target_ids
    target_ids: list[int] = field(default_factory=list)


def target_ids(tok: Any, record: EditRecord) -> list[int]:
    ids = tok(target_text(record.prompt, record.target_new), add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"edit {record.case_id!r}: target {record.target_new!r} tokenizes to nothing")
    return list(ids)


def rewrite_rows(tok: Any, records: Sequence[EditRecord], templates: Sequence[str]) -> list[Row]:
    """Every (edit, context template) with the target's first tokens appended, then one
    '{subject} is a' row per edit for the KL term (MEMIT compute_z)."""
    rows: list[Row] = []
    for e, r in enumerate(records):
        tgt = target_ids(tok, r)
        s_end = r.prompt.index(r.subject) + len(r.subject)
        for t in templates:
            prefix = t[: t.index("{}")]
            ids, lookup = subject_last_index(tok, prefix + r.prompt, len(prefix) + s_end)
            n = len(ids)
            rows.append(Row(ids + tgt[:-1], lookup, e, False, list(range(n - 1, n - 1 + len(tgt))), tgt))
    for e, r in enumerate(records):
        text = f"{r.subject} is a"
        ids, lookup = subject_last_index(tok, text, len(r.subject))
        rows.append(Row(ids, lookup, e, True))
    return rows


def key_rows(tok: Any, records: Sequence[EditRecord], templates: Sequence[str]) -> list[Row]:
    """Every (edit, context template) prompt without the target (MEMIT compute_ks)."""
    rows = []
    for e, r in enumerate(records):
        s_end = r.prompt.index(r.subject) + len(r.subject)
        for t in templates:
            prefix = t[: t.index("{}")]
            ids, lookup = subject_last_index(tok, prefix + r.prompt, len(prefix) + s_end)
            rows.append(Row(ids, lookup, e))
    return rows


def prefix_groups(rows: Sequence[Row], max_tokens: int) -> list[list[int]]:
    """Indices of rows grouped by prefix length (the lookup index), then by suffix length,
    each group's padded suffix size within ``max_tokens``."""
    by_prefix: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_prefix.setdefault(r.lookup, []).append(i)
    groups: list[list[int]] = []
    for _, idx in sorted(by_prefix.items()):
        for sub in length_groups([len(rows[i].ids) - rows[i].lookup for i in idx], max_tokens):
            groups.append([idx[k] for k in sub])
    return groups


def length_groups(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped by length (sorted), each group's padded size within ``max_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    groups: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[i]
        if cur and (len(cur) + 1) * width > max_tokens:
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    return groups


def pad_right(seqs: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out


def pad_id(tok: Any) -> int:
    for v in (tok.pad_token_id, tok.eos_token_id, 0):
        if v is not None:
            return int(v)
    return 0


# ----------------------------------------------------------------------------------------
# Running parts of the model
# ----------------------------------------------------------------------------------------


def compute_context(lm: Any, compute_dtype: str) -> contextlib.AbstractContextManager:
    """Autocast for the forward passes: bfloat16 on GPU by default, else none."""
    dev = lm.device.type
    if compute_dtype == "bfloat16" or (compute_dtype == "auto" and dev == "cuda"):
        return torch.autocast(dev, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def module_io(lm: Any, module: Any, ids: torch.Tensor, which: str, compute_dtype: str = "auto",
              **forward: Any) -> torch.Tensor:
    """The input (``which='input'``) or output of ``module`` for a forward of ``ids``,
    stopped right there; ``forward`` goes to the model (default ``use_cache=False``)."""
    got: dict[str, torch.Tensor] = {}

    def grab_input(_m, args, kwargs):
        got["x"] = args[0] if args else kwargs["hidden_states"]
        raise StopForward

    def grab_output(_m, _args, output):
        got["x"] = output[0] if isinstance(output, tuple | list) else output
        raise StopForward

    if which == "input":
        handle = module.register_forward_pre_hook(grab_input, with_kwargs=True)
    else:
        handle = module.register_forward_hook(grab_output)
    try:
        with compute_context(lm, compute_dtype):
            lm.model(ids.to(lm.device), **{"use_cache": False, **forward})
    except StopForward:
        pass
    finally:
        handle.remove()
    return got["x"].detach()


@torch.no_grad()
def module_values_at(lm: Any, rows: Sequence[Row], module_name: str, which: str, max_tokens: int,
                     compute_dtype: str = "auto") -> torch.Tensor:
    """The input (``which='input'``) or output of ``module_name`` at each row's lookup
    token, float32 (rows, features). The forward stops at that module."""
    module = lm.model.get_submodule(module_name)
    pad = pad_id(lm.tokenizer)
    result: list[tuple[list[int], torch.Tensor]] = []
    for group in length_groups([len(r.ids) for r in rows], max_tokens):
        ids = pad_right([rows[i].ids for i in group], pad)
        lookup = torch.tensor([rows[i].lookup for i in group], device=lm.device)
        x = module_io(lm, module, ids, which, compute_dtype)
        x = x.reshape(ids.shape[0], ids.shape[1], -1)  # OPT flattens tokens before its MLP
        result.append((group, x[torch.arange(len(group), device=x.device), lookup].float().cpu()))
    out = torch.empty(len(rows), result[0][1].shape[-1])
    for group, vals in result:
        out[group] = vals
    return out


class Tail:
    """The model above decoder layer ``z``: layers z+1.., the final norm and the LM head,
    evaluated at chosen positions only."""

    def __init__(self, lm: Any, z: int):
        self.lm = lm
        self.z = z
        self.layers = list(decoder_layers(lm.model, lm.arch))[z + 1 :]
        self.norm = get_path(lm.model, lm.arch.final_norm)
        self.head = lm.model.get_output_embeddings()
        decoder = get_path(lm.model, lm.arch.layers.rsplit(".", 1)[0])
        self.project_out = getattr(decoder, "project_out", None)
        self.softcap = getattr(lm.model.config, "final_logit_softcapping", None)
        self._calls: dict[int, list[Any]] = {}
        # offloaded (accelerate onloads each layer per call): recompute each layer in the backward
        # pass instead of keeping its onloaded weights alive for it, so v* holds one layer at a time
        self.recompute = bool(getattr(lm, "offloaded", False))

    def run_layer(self, layer: Any, h: torch.Tensor, call: Any) -> torch.Tensor:
        if self.recompute and torch.is_grad_enabled() and h.requires_grad:
            from torch.utils.checkpoint import checkpoint

            return checkpoint(call_layer, layer, h, call, use_reentrant=False)
        return call_layer(layer, h, call)

    def calls(self, width: int) -> list[Any]:
        if width not in self._calls:
            ids = torch.full((1, width), pad_id(self.lm.tokenizer), dtype=torch.long)
            self._calls[width] = layer_call_arguments(self.lm, ids)[self.z + 1 :]
        return self._calls[width]

    def logits(self, h: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
               split: SplitGroup | None = None, sel: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (len(rows), vocab) at (rows[k], positions[k]) of hidden states ``h``
        (batch, width, hidden) that enter layer z+1. With ``split``, ``h`` are suffixes
        (rows ``sel`` of the group) that attend to the group's kept prefix."""
        if split is None:
            for layer, call in zip(self.layers, self.calls(h.shape[1]), strict=True):
                h = self.run_layer(layer, h, call)
        else:
            kv = PrefixKV(split.prefix_kv, sel)

            def put(v: Any) -> Any:
                return kv if v is CACHE else v

            for layer, (args, kwargs) in zip(self.layers, split.calls, strict=True):
                h = self.run_layer(layer, h, (tuple(put(a) for a in args), {k: put(v) for k, v in kwargs.items()}))
        x = self.norm(h[rows, positions])
        if self.project_out is not None:
            x = self.project_out(x)
        logits = self.head(x).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class PrefixKV:
    """Keys and values of a fixed prefix, per layer index, for the attention modules of the
    layers above the edit: ``update`` returns the prefix followed by the new tokens and
    keeps nothing, so the same prefix serves every step. ``sel`` picks batch rows."""

    def __init__(self, prefix_kv: dict[int, tuple[torch.Tensor, torch.Tensor]], sel: torch.Tensor | None):
        self.prefix_kv = prefix_kv
        self.sel = sel

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *_args: Any, **_kwargs: Any):
        if layer_idx not in self.prefix_kv:  # no prefix: attention sees the suffix only
            return key, value
        pk, pv = self.prefix_kv[layer_idx]
        if self.sel is not None:
            pk, pv = pk[self.sel], pv[self.sel]
        return torch.cat([pk.to(key.dtype), key], dim=-2), torch.cat([pv.to(value.dtype), value], dim=-2)


@dataclass
class SplitGroup:
    """Rows of one prefix length: the residual leaving layer z over their suffixes, the
    prefix's keys and values of every layer above z, and the layer arguments."""

    h0: torch.Tensor  # (rows, suffix width, hidden)
    prefix_kv: dict[int, tuple[torch.Tensor, torch.Tensor]]
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]]  # for layers z+1.., the cache as CACHE


CACHE = object()  # where a layer's call takes the cache


def _cache_argument(model: Any) -> str:
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _is_cache(value: Any) -> bool:
    from transformers.cache_utils import Cache

    return isinstance(value, Cache)


@torch.no_grad()
def split_forward(lm: Any, z: int, prefix: torch.Tensor, suffix: torch.Tensor, compute_dtype: str = "auto") -> SplitGroup:
    """Run ``prefix`` (rows, p) with a cache, then ``suffix`` (rows, s) after it up to the
    output of decoder layer ``z``; keep the prefix keys and values of the layers above z
    and the layer arguments of one row's suffix."""
    from transformers import DynamicCache

    layers = decoder_layers(lm.model, lm.arch)
    dev = lm.device
    name = _cache_argument(lm.model)

    def prefilled(ids: torch.Tensor) -> Any:
        cache = DynamicCache(config=lm.model.config)
        if ids.shape[1]:
            lm.model(ids.to(dev), use_cache=True, **{name: cache})
        return cache

    with compute_context(lm, compute_dtype):
        cache = prefilled(prefix)
        kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if prefix.shape[1]:
            for i in range(z + 1, len(layers)):
                cl = cache.layers[i]
                kv[i] = (cl.keys, cl.values)
        h0 = module_io(lm, layers[z], suffix, "output", compute_dtype, use_cache=True, **{name: cache})

        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((), {}) for _ in layers[z + 1 :]]

        def keep(j: int):
            def hook(_module, args, kwargs):
                kept = {k: CACHE if _is_cache(v) else v for k, v in kwargs.items() if k != "hidden_states"}
                calls[j] = (tuple(CACHE if _is_cache(a) else a for a in args[1:]), kept)
            return hook

        handles = [layer.register_forward_pre_hook(keep(j), with_kwargs=True) for j, layer in enumerate(layers[z + 1 :])]
        try:
            one = prefilled(prefix[:1])
            lm.model(suffix[:1].to(dev), use_cache=True, **{name: one})
        finally:
            for h in handles:
                h.remove()
    return SplitGroup(h0, kv, calls)


def residual_after(lm: Any, z: int, ids: torch.Tensor, compute_dtype: str = "auto") -> torch.Tensor:
    """The hidden states leaving decoder layer ``z`` for right-padded ``ids``."""
    return module_io(lm, decoder_layers(lm.model, lm.arch)[z], ids, "output", compute_dtype)


def residual_entering(lm: Any, i: int, ids: torch.Tensor, compute_dtype: str = "auto") -> torch.Tensor:
    """The hidden states entering decoder layer ``i`` for right-padded ``ids``."""
    return module_io(lm, decoder_layers(lm.model, lm.arch)[i], ids, "input", compute_dtype)


# ----------------------------------------------------------------------------------------
# Context templates
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def context_templates(lm: Any, n: int, length: int, seed: int) -> list[str]:
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
            texts[k] = tok.decode(seqs[j].tolist(), skip_special_tokens=True)
    return ["{}"] + [texts[k].replace("{", " ").replace("}", " ") + ". {}" for k in range(n)]


# ----------------------------------------------------------------------------------------
# v*: the target residual for each edit
# ----------------------------------------------------------------------------------------


def kl_term(now: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    """KL(p_now ‖ p_init) per edit, over the vocabulary, from log-probabilities: MEMIT's
    compute_z (``kl_div(init, now, log_target=True)``, which is KL of ``now`` from ``init``)."""
    return (now.exp() * (now - init)).sum(-1)


def template_key_mean(k_all: torch.Tensor, n_edits: int, n_templates: int) -> torch.Tensor:
    """Each edit's key from its ``n_templates`` rows (template 0 the bare prompt, the rest the
    generated prefixes): averaged within each group of templates, then across the groups, as
    MEMIT's compute_ks does; the bare prompt weighs 1/2, the generated ones share the other 1/2."""
    k = k_all.view(n_edits, n_templates, -1)
    if n_templates == 1:
        return k[:, 0]
    return 0.5 * (k[:, 0] + k[:, 1:].mean(dim=1))


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


def _adam(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: torch.Tensor,
          lr: float, active: torch.Tensor, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
    """torch.optim.Adam's update, per row, on the ``active`` rows only."""
    a = active
    t[a] += 1
    m[a] = b1 * m[a] + (1 - b1) * g[a]
    v[a] = b2 * v[a] + (1 - b2) * g[a] * g[a]
    bc1 = 1 - b1 ** t[a].unsqueeze(1)
    bc2 = 1 - b2 ** t[a].unsqueeze(1)
    denom = (v[a].sqrt() / bc2.sqrt()) + eps
    p[a] = p[a] - (lr / bc1) * m[a] / denom


def optimize_vstar(lm: Any, records: Sequence[EditRecord], templates: Sequence[str], z: int, hp: dict[str, Any],
                   early_stop: float, max_tokens: int, compute_dtype: str = "auto", advance: Any = None) -> VStarResult:
    """MEMIT compute_z for every edit at once (see the module docstring)."""
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
    cached = []
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
        cached.append({
            "split": split,
            "edit": torch.tensor([rows[i].edit for i in group], device=dev),
            "kl": torch.tensor([rows[i].kl for i in group], device=dev),
            "t_row": torch.tensor(tr, dtype=torch.long, device=dev),
            "t_pos": torch.tensor(tp, dtype=torch.long, device=dev),
            "t_id": torch.tensor(tt, dtype=torch.long, device=dev),
            "t_edit": torch.tensor(te, dtype=torch.long, device=dev),
        })
    # h at the subject's last token of the bare prompt ("{}" template, row e * n_rewrite)
    init = torch.empty(n_edits, cached[0]["split"].h0.shape[-1], device=dev)
    for g, group in zip(cached, groups, strict=True):
        for k, i in enumerate(group):
            r = rows[i]
            if not r.kl and i % n_rewrite == 0:
                init[r.edit] = g["split"].h0[k, 0]
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
    n_steps = int(hp["v_num_grad_steps"])
    params = [p for p in lm.model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        for it in range(n_steps):
            d = delta.clone().requires_grad_(True)
            nll = torch.zeros(n_edits, device=dev)
            kl_logp = {}
            for g in cached:
                keep = active[g["edit"]]
                if not bool(keep.any()):
                    continue
                sel = keep.nonzero().squeeze(1)
                h0 = g["split"].h0[sel]
                width = h0.shape[1]
                if it == 0:
                    tokens_first += int(sel.numel()) * width
                add = torch.zeros_like(h0)
                add[:, 0] = d[g["edit"][sel]]  # the lookup token is suffix position 0
                # rows of this subset: new index of each kept row
                new_index = torch.full((len(g["edit"]),), -1, dtype=torch.long, device=dev)
                new_index[sel] = torch.arange(len(sel), device=dev)
                t_keep = keep[g["t_row"]]
                kl_rows = g["kl"][sel].nonzero().squeeze(1)
                q_rows = torch.cat([new_index[g["t_row"][t_keep]], kl_rows])
                q_pos = torch.cat([g["t_pos"][t_keep], torch.zeros_like(kl_rows)])
                whole = len(sel) == len(g["edit"])
                with compute_context(lm, compute_dtype):
                    logits = tail.logits((h0 + add).to(h0.dtype), q_rows, q_pos, g["split"], None if whole else sel)
                logp = torch.log_softmax(logits.float(), dim=-1)
                n_t = int(t_keep.sum())
                tok_logp = logp[torch.arange(n_t, device=dev), g["t_id"][t_keep]]
                t_edit = g["t_edit"][t_keep]
                nll = nll.index_add(0, t_edit, -tok_logp / (target_len[t_edit] * n_rewrite))
                for j, e in enumerate(g["edit"][sel][kl_rows].tolist()):
                    kl_logp[e] = logp[n_t + j]
            edits_now = active.nonzero().squeeze(1).tolist()
            kl_now = torch.stack([kl_logp[e] for e in edits_now])
            if kl_init is None:
                kl_init = torch.zeros(n_edits, kl_now.shape[-1], device=dev)
                kl_init[edits_now] = kl_now.detach()
            kl = kl_term(kl_now, kl_init[edits_now])
            idx = torch.tensor(edits_now, device=dev)
            wd = hp["v_weight_decay"] * d[idx].norm(dim=1) / init_norm[idx] ** 2
            loss = nll[idx] + hp["kl_factor"] * kl + wd
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
            grad = d.grad.detach()
            now = torch.zeros(n_edits, dtype=torch.bool, device=dev)
            now[idx[go]] = True
            _adam(delta, grad, m, v, t, float(hp["v_lr"]), now)
            max_norm = hp["clamp_norm_factor"] * init_norm
            norms = delta.norm(dim=1)
            scale = torch.where(norms > max_norm, max_norm / norms.clamp_min(1e-12), torch.ones_like(norms))
            delta = delta * scale.unsqueeze(1)
            for e in idx[go].tolist():
                steps[e] += 1
            active[idx[done]] = False
            if advance is not None:
                advance(1)
    finally:
        for p in params:
            p.requires_grad_(True)
    return VStarResult((init + delta).detach().float().cpu(), init.detach().float().cpu(), steps, first_loss,
                       final_loss, final_nll, forward_steps, tokens_first)


# ----------------------------------------------------------------------------------------
# The update
# ----------------------------------------------------------------------------------------


def memit_delta(keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor, lam: float) -> torch.Tensor:
    """ΔW = R Kᵀ (λC + K Kᵀ)⁻¹ in float64 (MEMIT eq. 14): keys K (d_in, n), residuals
    R (d_out, n), covariance C (d_in, d_in). Returns (d_out, d_in)."""
    k = keys.to(cov.device).double()
    adj = torch.linalg.solve(lam * cov.double() + k @ k.T, k)
    return resid.to(cov.device).double() @ adj.T


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


def iter_batches(n: int, size: int) -> Iterator[range]:
    size = n if size <= 0 else size
    for s in range(0, n, size):
        yield range(s, min(n, s + size))
