"""Sequential onloading of a model that accelerate offloaded to CPU or disk (``--device-map
auto`` with ``--max-memory``), so a model larger than the execution device can be compressed
and edited one decoder layer at a time, as llm-compressor does.

accelerate keeps an offloaded module's parameters on the ``meta`` device and its real values
in a weights map (CPU tensors, or memory-mapped files in the offload folder), loading them for
each forward pass. :func:`onloaded` materializes the parameters of some modules on their
execution device for the duration of a block — reads and in-place changes see real tensors,
forward passes use them as they are — and, on exit, writes the (changed) values back to the
weights map (to its CPU dict, or rewriting the offload folder's file) and returns the modules
to ``meta``. Outside such a block :meth:`lmcompose.models.handle.LM.weight` refuses an
offloaded layer instead of handing out a meta tensor.

For a model that is not offloaded every function here is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch

from lmcompose.errors import LMComposeError

__all__ = ["OffloadError", "execution_device", "is_offloaded", "onloaded", "stored_tensors"]


class OffloadError(LMComposeError):
    """A weight of an offloaded layer used outside :func:`onloaded`."""


class _WeightsMap(Protocol):
    """accelerate's weights map of an offloaded module (a PrefixedDataset): its tensors by name."""

    def __getitem__(self, name: str, /) -> torch.Tensor: ...

    def __contains__(self, name: object, /) -> bool: ...


class _OffloadHook(Protocol):
    """What we use of accelerate's AlignDevicesHook on an offloaded module."""

    offload: bool
    weights_map: _WeightsMap
    execution_device: torch.device | str | int


def _hook(module: torch.nn.Module) -> _OffloadHook | None:
    hook = getattr(module, "_hf_hook", None)
    return hook if getattr(hook, "offload", False) and getattr(hook, "weights_map", None) is not None else None


def _own_names(module: torch.nn.Module) -> list[str]:
    return [n for n, _ in module.named_parameters(recurse=False)] + [
        n for n, _ in module.named_buffers(recurse=False) if n in getattr(_hook(module), "weights_map", {})
    ]


def is_offloaded(model: torch.nn.Module) -> bool:
    return any(_hook(m) is not None for m in model.modules())


def execution_device(model: torch.nn.Module) -> torch.device:
    """Where a model computes: the execution device of its offload hooks, else its first
    parameter's device."""
    for m in model.modules():
        hook = getattr(m, "_hf_hook", None)
        dev = getattr(hook, "execution_device", None)
        if dev is not None:
            return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _write_back(weights_map: _WeightsMap, name: str, value: torch.Tensor) -> None:
    """Store ``value`` as the weights map's entry ``name`` (a CPU dict entry, or the offload
    folder's memory-mapped file, rewritten)."""
    from accelerate.utils import offload_weight

    prefix = getattr(weights_map, "prefix", "")
    store = getattr(weights_map, "dataset", weights_map)
    key = prefix + name
    value = value.detach().to("cpu").contiguous()
    state = getattr(store, "state_dict", None)
    index = getattr(store, "index", None)
    folder = getattr(store, "save_folder", None)
    if isinstance(state, dict) and (key in state or index is None or folder is None):
        state[key] = value
    elif index is not None and folder is not None:
        index.pop(key, None)
        offload_weight(value, key, folder, index=index)
    elif isinstance(store, dict):
        store[key] = value
    else:  # pragma: no cover - an accelerate weights map of a kind not seen yet
        raise OffloadError(f"cannot write {key} back to accelerate's offload store ({type(store).__name__})")


@contextmanager
def onloaded(modules: Iterable[torch.nn.Module], write: bool = True) -> Iterator[None]:
    """Materialize the offloaded parameters of ``modules`` (and their submodules) on their
    execution device for the block; with ``write``, store their values back on exit."""
    from accelerate.utils import set_module_tensor_to_device

    opened: list[tuple[torch.nn.Module, _OffloadHook, list[str]]] = []
    seen: set[int] = set()
    try:
        for root in modules:
            for m in root.modules():
                hook = _hook(m)
                if hook is None or id(m) in seen:
                    continue
                seen.add(id(m))
                names = _own_names(m)
                for name in names:  # a copy: the store may be a read-only memory map
                    value = hook.weights_map[name].to(hook.execution_device, copy=True)
                    set_module_tensor_to_device(m, name, hook.execution_device, value=value)
                hook.offload = False  # forward passes now use the materialized tensors as they are
                opened.append((m, hook, names))
        yield
    finally:
        for m, hook, names in reversed(opened):
            for name in names:
                if write:
                    _write_back(hook.weights_map, name, getattr(m, name))
                set_module_tensor_to_device(m, name, "meta")
            hook.offload = True


def stored_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` by qualified name, offloaded ones read from
    accelerate's weights map (CPU tensors; nothing is moved to the execution device)."""
    out: dict[str, torch.Tensor] = {}
    for mod_name, m in model.named_modules():
        hook = _hook(m)
        prefix = mod_name + "." if mod_name else ""
        for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if hook is not None and name in hook.weights_map:
                out[prefix + name] = hook.weights_map[name]
            else:
                out[prefix + name] = t
    return out


def restore_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put ``tensors`` (from :func:`stored_tensors`) back: into offloaded modules' weights maps,
    into the others' parameters."""
    for mod_name, m in model.named_modules():
        hook = _hook(m)
        prefix = mod_name + "." if mod_name else ""
        for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            key = prefix + name
            if key not in tensors:
                continue
            if hook is not None and name in hook.weights_map:
                _write_back(hook.weights_map, name, tensors[key])
            else:
                with torch.no_grad():
                    t.copy_(tensors[key])
