"""The optimisation loop every unlearner shares: Adam(W) on the named parameters, gradients
summed over ``grad_accum`` batches, a stop (not a crash) when the loss or the weights stop
being finite, float32 master copies for parameters held in lower precision."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from lmcompose.calibration import StopForward
from lmcompose.models.arch import decoder_layers

if TYPE_CHECKING:
    from collections.abc import Iterator

    from lmcompose import LM

__all__ = ["TrainLog", "layer_output", "train"]


@dataclass
class TrainLog:
    """What a training run did: optimiser steps, batches seen, the first and last batch
    loss, and why it stopped early (None when it ran to the end)."""

    steps: int
    batches: int
    loss_first: float
    loss_final: float
    stopped: str | None = None


def train(
    lm: LM,
    params: Sequence[tuple[str, torch.nn.Parameter]],
    batches: Sequence[Any],
    loss_of: Callable[[Any], torch.Tensor],
    *,
    lr: float,
    weight_decay: float = 0.0,
    grad_accum: int = 1,
    adamw: bool = False,
    advance: Callable[[int], None] | None = None,
) -> TrainLog:
    """Minimise ``loss_of(batch)`` over ``batches`` in order, training only ``params``
    (every other parameter frozen meanwhile, restored after). An optimiser step follows every
    ``grad_accum`` batches (each loss divided by ``grad_accum``, as the ICLR code does) and
    the last batch. A loss that is not finite stops training before its gradient is used; a
    step that leaves a weight not finite is undone and stops training: either way the model
    keeps its last finite weights and ``stopped`` says where."""
    model = lm.model
    tensors = [p for _, p in params]
    trainable = {id(p) for p in tensors}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in trainable]
    for p in frozen:
        p.requires_grad_(False)
    for p in tensors:
        p.requires_grad_(True)
    # a bf16 or fp16 parameter is trained through a float32 master copy (Adam's state and
    # epsilon in float32), each step's result rounded into the model
    masters = [p.detach().float().clone() if p.dtype != torch.float32 else None for p in tensors]
    opt_params = [m if m is not None else p for p, m in zip(tensors, masters, strict=True)]
    cls = torch.optim.AdamW if adamw else torch.optim.Adam
    opt = cls(opt_params, lr=lr, weight_decay=weight_decay)
    first = final = float("nan")
    steps = seen = 0
    stopped = None
    pending = 0
    try:
        for k, batch in enumerate(batches):
            loss = loss_of(batch)
            value = float(loss.detach())
            if not math.isfinite(value):
                stopped = f"the loss is {value} at batch {k + 1}"
                break
            first = value if k == 0 else first
            final = value
            (loss / grad_accum).backward()
            seen += 1
            pending += 1
            if pending == grad_accum or k == len(batches) - 1:
                pending = 0
                if not _step(opt, tensors, masters):
                    stopped = f"a weight became non-finite at optimiser step {steps + 1} (batch {k + 1}); step undone"
                    break
                steps += 1
            if advance is not None:
                advance(1)
    finally:
        opt.zero_grad(set_to_none=True)
        for p in tensors:
            p.grad = None
            p.requires_grad_(True)
        for p in frozen:
            p.requires_grad_(True)
    return TrainLog(steps, seen, first, final, stopped)


def _step(opt: torch.optim.Optimizer, tensors: list[torch.nn.Parameter], masters: list[torch.Tensor | None]) -> bool:
    """One optimiser step; False (and the weights as before) when it made any weight non-finite."""
    before = [(m if m is not None else p).detach().clone() for p, m in zip(tensors, masters, strict=True)]
    for p, m in zip(tensors, masters, strict=True):
        if m is not None:
            m.grad = None if p.grad is None else p.grad.float()
    opt.step()
    opt.zero_grad(set_to_none=True)
    for p in tensors:
        p.grad = None
    with torch.no_grad():
        for p, m in zip(tensors, masters, strict=True):
            if m is not None:
                p.copy_(m)
        if all(bool(torch.isfinite(p).all()) for p in tensors):
            return True
        for p, m, b in zip(tensors, masters, before, strict=True):
            (m if m is not None else p).copy_(b)
            if m is not None:
                p.copy_(b)
    return False


@contextmanager
def _capture(module: torch.nn.Module, store: list[torch.Tensor], stop: bool) -> Iterator[None]:
    def hook(_m: torch.nn.Module, _args: tuple[object, ...], out: torch.Tensor | tuple[torch.Tensor, ...]) -> None:
        store.append(out[0] if isinstance(out, tuple) else out)
        if stop:
            raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def layer_output(lm: LM, layer: int, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """The residual stream after decoder layer ``layer`` (B x T x H), with gradient when
    enabled; the forward pass ends there (nothing above the layer changes it)."""
    store: list[torch.Tensor] = []
    module = decoder_layers(lm.model, lm.arch)[layer]
    with _capture(module, store, stop=True):
        try:
            lm.model(input_ids=ids, attention_mask=attn, use_cache=False)
        except StopForward:
            pass
    return store[0]
