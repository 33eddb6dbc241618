"""Running parts of a model for locate-then-edit: a module's input or output at chosen
tokens, and the model above decoder layer z at chosen positions (``Tail``), with each
sequence split at the subject's last token so the prefix runs once (``split_forward``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch

from lmcompose.calibration import LayerCall, StopForward, call_layer, layer_call_arguments
from lmcompose.editing._rows import Row, length_groups, pad_id, pad_right
from lmcompose.models.arch import decoder_layers, get_path

if TYPE_CHECKING:
    from transformers import DynamicCache

    from lmcompose.models.handle import LM

#: a forward pre-hook that takes keyword arguments (``register_forward_pre_hook(..., with_kwargs=True)``)
KwargsPreHook = Callable[[torch.nn.Module, tuple[object, ...], dict[str, object]], None]


def compute_context(lm: LM, compute_dtype: str) -> contextlib.AbstractContextManager[object]:
    """Autocast for the forward passes: bfloat16 on GPU by default, else none."""
    dev = lm.device.type
    if compute_dtype == "bfloat16" or (compute_dtype == "auto" and dev == "cuda"):
        return torch.autocast(dev, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def module_io(
    lm: LM, module: torch.nn.Module, ids: torch.Tensor, which: str, compute_dtype: str = "auto", **forward: object
) -> torch.Tensor:
    """The input (``which='input'``) or output of ``module`` for a forward of ``ids``,
    stopped right there; ``forward`` goes to the model (default ``use_cache=False``)."""
    got: dict[str, torch.Tensor] = {}

    def grab_input(_m: torch.nn.Module, args: tuple[torch.Tensor, ...], kwargs: dict[str, torch.Tensor]) -> None:
        got["x"] = args[0] if args else kwargs["hidden_states"]
        raise StopForward

    def grab_output(
        _m: torch.nn.Module, _args: tuple[object, ...], output: torch.Tensor | tuple[torch.Tensor, ...]
    ) -> None:
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
def module_values_at(
    lm: LM, rows: Sequence[Row], module_name: str, which: str, max_tokens: int, compute_dtype: str = "auto"
) -> torch.Tensor:
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

    def __init__(self, lm: LM, z: int):
        self.lm = lm
        self.z = z
        self.layers = list(decoder_layers(lm.model, lm.arch))[z + 1 :]
        self.norm = get_path(lm.model, lm.arch.final_norm)
        self.head = lm.model.get_output_embeddings()
        decoder = get_path(lm.model, lm.arch.layers.rsplit(".", 1)[0])
        self.project_out = getattr(decoder, "project_out", None)
        self.softcap = getattr(lm.model.config, "final_logit_softcapping", None)
        # the model's own dtype: the optimisation keeps its residual (and v*) in float32, and a
        # bf16 or fp16 model's layers and head take their inputs in their dtype
        self.dtype = cast(torch.Tensor, self.head.weight).dtype
        self._calls: dict[int, list[LayerCall]] = {}
        # offloaded (accelerate onloads each layer per call): recompute each layer in the backward
        # pass instead of keeping its onloaded weights alive for it, so v* holds one layer at a time
        self.recompute = bool(getattr(lm, "offloaded", False))

    def run_layer(self, layer: torch.nn.Module, h: torch.Tensor, call: LayerCall) -> torch.Tensor:
        h = h.to(self.dtype)
        if self.recompute and torch.is_grad_enabled() and h.requires_grad:
            from torch.utils.checkpoint import checkpoint

            return checkpoint(call_layer, layer, h, call, use_reentrant=False)
        return call_layer(layer, h, call)

    def calls(self, width: int) -> list[LayerCall]:
        if width not in self._calls:
            ids = torch.full((1, width), pad_id(self.lm.tokenizer), dtype=torch.long)
            self._calls[width] = layer_call_arguments(self.lm, ids)[self.z + 1 :]
        return self._calls[width]

    def logits(
        self,
        h: torch.Tensor,
        rows: torch.Tensor,
        positions: torch.Tensor,
        split: SplitGroup | None = None,
        sel: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (len(rows), vocab) at (rows[k], positions[k]) of hidden states ``h``
        (batch, width, hidden) that enter layer z+1. With ``split``, ``h`` are suffixes
        (rows ``sel`` of the group) that attend to the group's kept prefix."""
        if split is None:
            for layer, call in zip(self.layers, self.calls(h.shape[1]), strict=True):
                h = self.run_layer(layer, h, call)
        else:
            kv = PrefixKV(split.prefix_kv, sel)

            def put(v: object) -> object:
                return kv if v is CACHE else v

            for layer, (args, kwargs) in zip(self.layers, split.calls, strict=True):
                h = self.run_layer(layer, h, (tuple(put(a) for a in args), {k: put(v) for k, v in kwargs.items()}))
        x = self.norm(h[rows, positions].to(self.dtype))
        if self.project_out is not None:
            x = self.project_out(x)
        logits = self.head(x.to(self.dtype)).float()
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

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *_args: object, **_kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
    calls: list[LayerCall]  # for layers z+1.., the cache as CACHE


CACHE = object()  # where a layer's call takes the cache


def _cache_argument(model: torch.nn.Module) -> str:
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _is_cache(value: object) -> bool:
    from transformers.cache_utils import Cache

    return isinstance(value, Cache)


@torch.no_grad()
def split_forward(
    lm: LM, z: int, prefix: torch.Tensor, suffix: torch.Tensor, compute_dtype: str = "auto"
) -> SplitGroup:
    """Run ``prefix`` (rows, p) with a cache, then ``suffix`` (rows, s) after it up to the
    output of decoder layer ``z``; keep the prefix keys and values of the layers above z
    and the layer arguments of one row's suffix."""
    from transformers import DynamicCache
    from transformers.cache_utils import CacheLayerMixin

    layers = decoder_layers(lm.model, lm.arch)
    dev = lm.device
    name = _cache_argument(lm.model)

    def prefilled(ids: torch.Tensor) -> DynamicCache:
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
                if not isinstance(cl, CacheLayerMixin) or cl.keys is None or cl.values is None:
                    raise ValueError(
                        f"decoder layer {i} of {lm.arch.name!r} keeps no keys and values in the cache (not an "
                        "attention layer); split_forward needs attention layers above the edited one"
                    )
                kv[i] = (cl.keys, cl.values)
        h0 = module_io(lm, layers[z], suffix, "output", compute_dtype, use_cache=True, **{name: cache})

        calls: list[LayerCall] = [((), {}) for _ in layers[z + 1 :]]

        def keep(j: int) -> KwargsPreHook:
            def hook(_module: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
                kept = {k: CACHE if _is_cache(v) else v for k, v in kwargs.items() if k != "hidden_states"}
                calls[j] = (tuple(CACHE if _is_cache(a) else a for a in args[1:]), kept)

            return hook

        handles = [
            layer.register_forward_pre_hook(keep(j), with_kwargs=True) for j, layer in enumerate(layers[z + 1 :])
        ]
        try:
            one = prefilled(prefix[:1])
            lm.model(suffix[:1].to(dev), use_cache=True, **{name: one})
        finally:
            for h in handles:
                h.remove()
    return SplitGroup(h0, kv, calls)


def residual_after(lm: LM, z: int, ids: torch.Tensor, compute_dtype: str = "auto") -> torch.Tensor:
    """The hidden states leaving decoder layer ``z`` for right-padded ``ids``."""
    return module_io(lm, decoder_layers(lm.model, lm.arch)[z], ids, "output", compute_dtype)


def residual_entering(lm: LM, i: int, ids: torch.Tensor, compute_dtype: str = "auto") -> torch.Tensor:
    """The hidden states entering decoder layer ``i`` for right-padded ``ids``."""
    return module_io(lm, decoder_layers(lm.model, lm.arch)[i], ids, "input", compute_dtype)
