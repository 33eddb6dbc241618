"""The layer-sequential calibration pipeline shared by calibration-based compressors
(SparseGPT, Wanda, GPTQ, AWQ) and the statistics service.

For each decoder layer i, in order:

1. run the layer on its inputs (the calibration windows as they arrive at layer i) with
   hooks on the chosen projections, so a method gathers statistics (``observe``); this
   pass ends at the last watched projection's input (its outputs are never used: step 3
   recomputes them), which saves llama's down projection, about a fifth of the layer;
2. let the method change the layer (``modify``);
3. run the layer again with the modified weights; its outputs are layer i+1's inputs.

Peak memory is about one model plus one layer's activations (the hidden states of the
calibration set, n x seqlen x hidden). On a model accelerate offloaded (``--device-map`` with
``--max-memory``), each layer is onloaded to the execution device for its turn and stored
back after (:mod:`lmcompose.models.offload`): one decoder layer's weights at a time.
Layers are called with the keyword arguments the model itself passes them (attention
masks, rotary embeddings...), captured once per layer from a forward pass of one window,
so architectures with per-layer masks (gemma3's sliding-window layers) work unchanged.
Everything runs under ``torch.no_grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

import torch

from lmcompose.models.arch import decoder_layers

if TYPE_CHECKING:
    from lmcompose.api import Progress
    from lmcompose.models.handle import LM

__all__ = [
    "Gram",
    "StopForward",
    "call_layer",
    "capture_layer_calls",
    "inverse_cholesky_upper",
    "layer_call_arguments",
    "layer_module_names",
    "run_layer_sequential",
    "true_sequential_stages",
]


#: how the model calls a decoder layer after its hidden states: (positional, keyword) arguments
LayerCall = tuple[tuple[object, ...], dict[str, object]]


class StopForward(Exception):
    """Raised by a hook to end a forward pass once it has what it needs (the caller catches it)."""


class Gram:
    """Σ xxᵀ over the calibration tokens of one projection input, and the token count.

    The statistic of SparseGPT, GPTQ and AWQ (the Hessian of the layer-wise least-squares
    problem, up to a factor). ``add`` takes a (tokens, d) input in any dtype and accumulates
    in float64: every product of two float32 numbers is exact there, so the sum no longer
    depends on the order BLAS adds the tokens in (thread count, blocking) beyond float64's
    last digits, and the solvers downstream, which amplify a perturbation of H by its
    condition number, see the same H on every machine (docs/benchmarks.md, "Numerical
    amplification"). bf16 compute does not round the sum either.

    XXᵀ is symmetric, so on CPU only its upper block triangle is computed: row stripes of
    about ``stripe`` rows, stripe k holding rows [a, b) and columns [a, d), each its own
    contiguous buffer updated by one matrix product. With k stripes that is (k + 1) / 2k of
    the full product's flops (0.58 for d = 1536 in 6 stripes); torch has no symmetric
    rank-k update (BLAS ``syrk``), and this gets most of its saving from plain ``addmm_``.
    ``xxt`` assembles the full symmetric matrix (a fresh tensor on every access). On other
    devices, where small products are launch-bound, one full product is kept.
    """

    def __init__(self, d: int, device: torch.device | str | None = None, stripe: int = 256):
        device = torch.device(device) if device is not None else torch.device("cpu")
        k = max(1, -(-d // stripe)) if device.type == "cpu" else 1
        self.d = d
        edges = [round(d * i / k) for i in range(k + 1)]
        self.spans = list(zip(edges[:-1], edges[1:], strict=True))  # stripe rows [a, b)
        self.stripes = [torch.zeros(b - a, d - a, dtype=torch.float64, device=device) for a, b in self.spans]
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        for (a, b), buf in zip(self.spans, self.stripes, strict=True):
            buf.addmm_(x[:, a:b].t(), x[:, a:])
        self.tokens += x.shape[0]

    @property
    def xxt(self) -> torch.Tensor:
        """Σ xxᵀ, (d, d) float64, exactly symmetric."""
        if len(self.stripes) == 1:
            upper = self.stripes[0]
        else:
            upper = torch.zeros(self.d, self.d, dtype=torch.float64, device=self.stripes[0].device)
            for (a, b), buf in zip(self.spans, self.stripes, strict=True):
                upper[a:b, a:] = buf
        return upper.triu() + upper.triu(1).t()

    def second_moment(self) -> torch.Tensor:
        """E[xxᵀ] = Σ xxᵀ / tokens."""
        return self.xxt / max(self.tokens, 1)


DAMPING_TRIES = 4


def inverse_cholesky_upper(h: torch.Tensor, percdamp: float) -> tuple[torch.Tensor | None, float, int]:
    """(U, λ, extra tries) for the second-order solvers (SparseGPT, GPTQ): U upper-triangular
    with UᵀU = (H + λI)⁻¹, λ = percdamp · mean(diag H); λ grows ×10 while H + λI is not
    positive definite, and U is None when it still is not after ``DAMPING_TRIES`` tries (the
    caller decides what to do).

    Computed in float64 (the reference code uses float32) and returned in float64: float32's
    rounding of the factorization (about 6e-8 relative, and different for another thread
    count or LAPACK build) is multiplied by the damped Hessian's condition number, enough to
    flip the solvers' rounding and pruning decisions (docs/interventions.md, "Numerics").

    On a CPU the factorizations run on one thread: LAPACK's blocked algorithms sum in an
    order that depends on the thread count, which moved U by 4e-12 between 1 and 2 threads,
    enough to change some of its float32 values and, through GPTQ's error feedback, 73% of a
    4-bit SmolLM2-135M's weights. One thread makes U the same for every thread count."""
    h = h.double()
    diag_mean = float(torch.diag(h).mean())
    damp = percdamp * diag_mean if diag_mean > 0 else 1.0
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    with _one_thread_on_cpu(h.device):
        for attempt in range(DAMPING_TRIES):
            lower, info = torch.linalg.cholesky_ex(h + damp * eye)
            if int(info) == 0:
                upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
                if int(info) == 0:
                    return upper, damp, attempt
            damp *= 10
    return None, damp / 10, DAMPING_TRIES


@contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """torch's intra-op pool at one thread for a block on a CPU tensor (restored after)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _layer_output(out: torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
    return out[0] if isinstance(out, tuple | list) else out


@torch.no_grad()
def capture_layer_calls(lm: LM, windows: torch.Tensor) -> tuple[torch.Tensor, list[LayerCall]]:
    """Inputs of decoder layer 0 for every window (n, seqlen, hidden), and the other
    arguments (positional, keyword) the model passes each layer, from one window: they
    depend only on the window length."""
    layers = decoder_layers(lm.model, lm.arch)
    device = lm.device
    per_layer = layer_call_arguments(lm, windows[:1])
    inputs: list[torch.Tensor] = []

    def grab(_module: torch.nn.Module, args: tuple[torch.Tensor, ...], kwargs: dict[str, torch.Tensor]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        inputs.append(hidden.detach())
        raise StopForward

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for j in range(windows.shape[0]):
            try:
                lm.model(windows[j : j + 1].to(device), use_cache=False)
            except StopForward:
                pass
    finally:
        handle.remove()
    return torch.cat(inputs, dim=0), per_layer


@torch.no_grad()
def layer_call_arguments(lm: LM, ids: torch.Tensor) -> list[LayerCall]:
    """The arguments (positional after the hidden states, keyword) the model passes each
    decoder layer for a batch of token ids ``ids`` (1 x seqlen): masks, positions, rotary
    embeddings. Without padding they depend only on the length, and broadcast over a batch."""
    layers = decoder_layers(lm.model, lm.arch)
    per_layer: list[LayerCall] = [((), {}) for _ in layers]
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def keep_kwargs(i: int) -> Callable[[torch.nn.Module, tuple[object, ...], dict[str, object]], None]:
        def hook(_module: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
            dropped = {"past_key_values", "past_key_value", "layer_past", "cache", "use_cache"}
            per_layer[i] = (
                tuple(args[1:]),
                {k: v for k, v in kwargs.items() if k not in dropped and k != "hidden_states"},
            )

        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(keep_kwargs(i), with_kwargs=True))
    try:
        lm.model(ids.to(lm.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return per_layer


def call_layer(layer: torch.nn.Module, hidden: torch.Tensor, call: LayerCall) -> torch.Tensor:
    args, kwargs = call
    return _layer_output(layer(hidden, *args, **kwargs))


@torch.no_grad()
def run_layer_sequential(
    lm: LM,
    windows: torch.Tensor,
    module_names: Callable[[int], list[str]],
    observe: Callable[[int, str, torch.Tensor], None],
    modify: Callable[[int, list[str]], None],
    progress: Progress | None = None,
    description: str = "calibrating",
    stages: Callable[[int, list[str]], list[list[str]]] | None = None,
    next_inputs: str = "modified",
) -> None:
    """Run the pipeline over every decoder layer.

    ``module_names(i)`` lists the qualified names of the projections of layer i to watch;
    ``observe(i, name, x)`` receives each watched module's input, flattened to
    (tokens, in_features); ``modify(i, names)`` changes those projections of layer i after
    their statistics are in. ``stages(i, names)`` splits a layer's names into groups handled
    one after another (true-sequential: a group's inputs come from the layer with the groups
    before it already changed); by default one group. ``next_inputs``: the next layer is
    calibrated on this layer's outputs after the change (``"modified"``) or before it
    (``"original"``, full precision).
    """
    if next_inputs not in ("modified", "original"):
        raise ValueError(f"next_inputs must be 'modified' or 'original', not {next_inputs!r}")
    layers = decoder_layers(lm.model, lm.arch)
    hidden, kwargs_per_layer = capture_layer_calls(lm, windows)
    ctx_task = progress.task(description, len(layers)) if progress is not None else None
    advance: Callable[[int], None] = ctx_task.__enter__() if ctx_task is not None else _advance_nothing
    try:
        for i, layer in enumerate(layers):
            kwargs = kwargs_per_layer[i]
            names = module_names(i)
            # an offloaded model: this layer's weights on the execution device, stored back after
            with lm.onloaded(layer, write=bool(names)):
                original = None
                if next_inputs == "original" and names:
                    original = torch.cat([call_layer(layer, hidden[j : j + 1], kwargs) for j in range(hidden.shape[0])])
                for group in stages(i, names) if stages is not None and names else [names]:
                    _observe_group(lm, layer, hidden, kwargs, i, group, observe)
                    modify(i, group)
                if original is not None:
                    hidden[:] = original
                else:
                    for j in range(hidden.shape[0]):
                        hidden[j : j + 1] = call_layer(layer, hidden[j : j + 1], kwargs)
            advance(1)
    finally:
        if ctx_task is not None:
            ctx_task.__exit__(None, None, None)


def _advance_nothing(n: int = 1) -> None:
    """What advances no progress bar (``run_layer_sequential`` without ``progress``)."""


def _observe_group(
    lm: LM,
    layer: torch.nn.Module,
    hidden: torch.Tensor,
    kwargs: LayerCall,
    i: int,
    names: list[str],
    observe: Callable[[int, str, torch.Tensor], None],
) -> None:
    """Run every window through ``layer`` with ``names`` watched (stopping after the last
    watched call: the rest of the output is not needed)."""
    calls = {"n": 0, "stop_after": 0}  # watched-module calls this window; when to stop (0: not known yet)

    def hook(_m: torch.nn.Module, args: tuple[torch.Tensor, ...], name: str) -> None:
        x = args[0]
        observe(i, name, x.reshape(-1, x.shape[-1]))
        calls["n"] += 1
        if calls["n"] == calls["stop_after"]:
            raise StopForward

    handles = [lm.model.get_submodule(name).register_forward_pre_hook(partial(hook, name=name)) for name in names]
    try:
        for j in range(hidden.shape[0] if names else 0):
            calls["n"] = 0
            try:
                call_layer(layer, hidden[j : j + 1], kwargs)
            except StopForward:
                pass
            # window 0 runs whole and counts the watched calls; the others stop after the last
            calls["stop_after"] = calls["stop_after"] or calls["n"]
    finally:
        for h in handles:
            h.remove()


def true_sequential_stages(lm: LM) -> Callable[[int, list[str]], list[list[str]]]:
    """A layer's projections in forward order of their inputs: attention inputs (q/k/v),
    attention output, MLP inputs, MLP output (GPTQ's true-sequential groups)."""
    arch = lm.arch
    order = [list(arch.attn_in), [arch.attn_out], list(arch.mlp_in), [arch.mlp_out]]

    def stages(i: int, names: list[str]) -> list[list[str]]:
        prefix = f"{arch.layers}.{i}."
        groups = [[prefix + s for s in suffixes if prefix + s in names] for suffixes in order]
        placed = {n for g in groups for n in g}
        rest = [n for n in names if n not in placed]
        return [g for g in groups if g] + ([rest] if rest else [])

    return stages


def layer_module_names(lm: LM, selected: list[tuple[str, torch.nn.Module]]) -> Callable[[int], list[str]]:
    """Group selected (name, module) pairs by decoder layer index."""
    prefix = lm.arch.layers + "."
    by_layer: dict[int, list[str]] = {}
    for name, _ in selected:
        idx = int(name[len(prefix) :].split(".", 1)[0])
        by_layer.setdefault(idx, []).append(name)
    return lambda i: by_layer.get(i, [])
