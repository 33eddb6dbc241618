"""Size and cost of the model as it stands: average bits, sparsity, bytes, FLOPs, latency.

Average bits are counted over the decoder projections (every linear layer of every decoder
layer; embeddings, norms and the LM head are excluded), from the actual weights:

* a weight a pruner zeroed (its keep-mask is False and it is still exactly 0) costs 1 bit;
  in a layer with no recorded mask every exact zero counts as pruned, unless the layer is
  quantized (then 0 is just a grid value);
* any other weight costs the layer's quantization bits if every weight still lies on the
  stored grid, else 16 (an fp16 weight);
* a quantized layer on its grid adds 32 bits (16-bit scale + 16-bit zero) per group.

A dense model therefore reports 16.0 (fp16 storage), whatever dtype it runs in.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from lmcompose.api import Context, Metric

if TYPE_CHECKING:
    from torch import Tensor

    from lmcompose.models.handle import LM
    from lmcompose.quant import QuantGrid

DENSE_BITS = 16


class CompressionState(Protocol):
    """What compressors recorded for a weight matrix (a :class:`lmcompose.models.handle.LayerCompression`)."""

    @property
    def keep_mask(self) -> Tensor | None: ...

    @property
    def quant(self) -> QuantGrid | None: ...


def pruned_count(w: Tensor, state: CompressionState | None) -> int:
    """Weights a pruner removed: where the layer's keep-mask is False and the weight is still
    0. Without a mask, every exact zero of an unquantized layer (a pruned checkpoint loaded
    as it is) and none of a quantized one (its zeros are grid values a quantizer rounded to)."""
    mask = state.keep_mask if state is not None else None
    if mask is not None:
        return int(((~mask) & (w == 0)).sum())
    if state is None or state.quant is None:
        return int((w == 0).sum())
    return 0


def layer_bits(w: Tensor, state: CompressionState | None) -> tuple[float, int, int]:
    """(storage bits, pruned weights, numel) of one weight matrix under the rules above."""
    n = w.numel()
    pruned = pruned_count(w, state)
    quant = state.quant if state is not None else None
    value_bits: float
    if quant is not None and quant.on_grid(w):
        value_bits, overhead = quant.bits, quant.overhead_bits
    else:
        value_bits, overhead = DENSE_BITS, 0
    return pruned * 1 + (n - pruned) * value_bits + overhead, pruned, n


def compression_summary(lm: LM) -> dict[str, float]:
    total_bits = 0.0
    zeros = numel = 0
    linear_names: set[str] = set()
    for name, _module in lm.linear_layers():
        with lm.onloaded(name, write=False):
            b, pruned, n = layer_bits(lm.weight(name), lm.compression.get(name))
        linear_names.add(name + ".weight")
        total_bits += b
        zeros += pruned
        numel += n
    # every other parameter, tied ones once (named_parameters lists a shared tensor once; by
    # name, so an offloaded model's meta placeholders count too)
    other = sum(p.numel() for n, p in lm.model.named_parameters() if n not in linear_names)
    return {
        "avg_bits": total_bits / numel,
        "sparsity": zeros / numel,
        "param_bytes": total_bits / 8 + other * DENSE_BITS / 8,
        "compressed_params": numel,
    }


class AverageBits(Metric):
    """Average bits per weight, sparsity (the share a pruner removed, see pruned_count) and
    parameter bytes of the decoder projections."""

    name = "avg_bits"
    keys = ("avg_bits", "sparsity", "param_bytes")
    higher_is_better = {"avg_bits": False, "sparsity": None, "param_bytes": False}

    def compute(self, lm: LM, ctx: Context) -> dict[str, float | None]:
        import torch

        with torch.no_grad():
            out: dict[str, float | None] = dict(compression_summary(lm))
        out.pop("compressed_params")
        return out


@dataclass
class FlopsConfig:
    tokens: int = field(
        default=128, metadata={"help": "sequence length of the measured forward pass (batch 1)", "range": (1, 1 << 16)}
    )
    latency_repeats: int = field(
        default=3,
        metadata={"help": "timed forward passes; the median is reported (0 = skip latency)", "range": (0, 1000)},
    )


class Flops(Metric):
    """FLOPs of one 1 x tokens forward pass, each linear layer scaled by the share of its
    weights a pruner kept (pruned_count; a quantizer's zeros are not skipped); latency."""

    name = "flops"
    keys = ("flops", "flops_dense", "latency_ms")
    higher_is_better = {"flops": False, "flops_dense": None, "latency_ms": False}
    Config = FlopsConfig
    config: FlopsConfig

    def compute(self, lm: LM, ctx: Context) -> dict[str, float | None]:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        t = self.config.tokens
        ids = (torch.arange(t) % lm.model.config.vocab_size).unsqueeze(0).to(lm.device)
        key = ("flops_dense", id(lm.model), t)
        with torch.inference_mode():
            if key not in ctx.state:
                counter = FlopCounterMode(display=False)
                with counter:
                    lm.model(ids)
                ctx.state[key] = counter.get_total_flops()
            dense = ctx.state[key]
            saved = 0.0
            for name, _module in lm.linear_layers():
                with lm.onloaded(name, write=False):
                    w = lm.weight(name)
                    saved += 2 * t * pruned_count(w, lm.compression.get(name))  # a quantizer's zeros still cost
            latencies = []
            for _ in range(self.config.latency_repeats):
                start = time.perf_counter()
                lm.model(ids)
                latencies.append((time.perf_counter() - start) * 1000)
        return {
            "flops": dense - saved,
            "flops_dense": float(dense),
            "latency_ms": statistics.median(latencies) if latencies else None,
        }
