"""The statistics service: second moments of module inputs, cached by what produces them.

MEMIT needs, for every edit layer, the uncentered second moment C = E[k kᵀ] of the inputs k
of the MLP output projection over a text corpus. C depends on every weight that runs
before that projection, so the cache key is a fingerprint of exactly those weights (found
by running the model once and recording the order modules execute in), plus the token
windows themselves. A pruned, quantized or AWQ-rescaled model therefore gets its own
statistics, and an edit to layer l's output projection does not invalidate layer l's own.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import torch

from lmcompose.calibration import StopForward
from lmcompose.results import follow_umask

if TYPE_CHECKING:
    from lmcompose.api.context import Progress
    from lmcompose.models.handle import LM

__all__ = ["input_fingerprint", "second_moments"]


def execution_order(lm: LM) -> list[str]:
    """Names of the model's modules in the order their forward runs (one short forward)."""
    order: list[str] = []
    handles = []
    for name, module in lm.model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(lambda _m, _a, name=name: order.append(name)))
    ids = torch.tensor([[lm.tokenizer.eos_token_id or 0] * 2], device=lm.device)
    try:
        with torch.no_grad():
            lm.model(ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))  # a module called twice runs first where it first runs


def producing_parameters(
    lm: LM, module_name: str, order: Sequence[str] | None = None
) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every parameter of a module that runs before ``module_name``: the
    weights that produce its input. Tied tensors appear once."""
    order = list(order) if order is not None else execution_order(lm)
    if module_name not in order:
        raise ValueError(f"module {module_name!r} does not run in the model's forward")
    before = order[: order.index(module_name)]
    owners = set(before)
    out: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    named: list[tuple[str, torch.Tensor]] = list(lm.model.named_parameters())
    if getattr(lm, "offloaded", False):  # meta placeholders: read the stored values
        from lmcompose.models.offload import stored_tensors

        stored = stored_tensors(lm.model)
        named = [(n, stored[n]) for n, _ in named]
    for name, p in named:
        owner = name.rsplit(".", 1)[0]
        if owner in owners and p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            out.append((name, p))
    return out


def tensors_fingerprint(tensors: Sequence[tuple[str, torch.Tensor]]) -> str:
    """blake2b over names, dtypes and bytes (sorted by name)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(tensors, key=lambda nt: nt[0]):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            # an ndarray is a buffer: numpy's stubs do not say so (no __buffer__ before Python 3.12)
            h.update(t.view(torch.uint8).numpy() if t.dtype != torch.bool else t.numpy().tobytes())  # type: ignore[arg-type]
    return h.hexdigest()


def input_fingerprint(lm: LM, module_name: str, order: Sequence[str] | None = None) -> str:
    """Fingerprint of the weights that produce ``module_name``'s input."""
    return tensors_fingerprint(producing_parameters(lm, module_name, order))


def _cache_file(folder: Path, module_name: str, weights_fp: str, windows_fp: str) -> Path:
    key = hashlib.sha1(f"{module_name}|{weights_fp}|{windows_fp}".encode()).hexdigest()[:20]
    return folder / f"mom2-{module_name.replace('.', '_')}-{key}.safetensors"


class _SecondMomentKeys(TypedDict):
    mom2: torch.Tensor
    tokens: int
    cached: bool
    fingerprint: str
    file: str | None


class SecondMoment(_SecondMomentKeys, total=False):
    """One module's input statistics (:func:`second_moments`): E[x xᵀ] (float64, d x d), the
    tokens it is over, whether the cache served it, the producing weights' fingerprint, its
    cache file, and the seconds computing it took (when computed here)."""

    elapsed_s: float


def _decoder_index(lm: LM, module_name: str) -> int:
    prefix = lm.arch.layers + "."
    return int(module_name[len(prefix) :].split(".", 1)[0])


def second_moments(
    lm: LM,
    module_names: Sequence[str],
    windows: torch.Tensor,
    cache_dir: Path | None = None,
    batch_size: int = 8,
    progress: Progress | None = None,
    description: str = "input statistics",
) -> dict[str, SecondMoment]:
    """E[x xᵀ] (float64, d x d) of the inputs x of each named module, over every token of
    ``windows`` (n x seqlen token ids), with the token count and whether it came from the cache.

    Cached in ``cache_dir`` (safetensors + a JSON sidecar) under the fingerprint of the
    weights producing each input and a hash of the windows. The forward stops after the
    last module that still needs statistics.
    """
    from safetensors.torch import load_file, save_file

    windows_fp = hashlib.sha1(windows.cpu().numpy().tobytes()).hexdigest()
    order = execution_order(lm)
    results: dict[str, SecondMoment] = {}
    missing: list[str] = []
    files: dict[str, Path] = {}
    fps: dict[str, str] = {}
    for name in module_names:
        fps[name] = input_fingerprint(lm, name, order)
        if cache_dir is not None:
            files[name] = _cache_file(cache_dir, name, fps[name], windows_fp)
            if files[name].exists():
                data = load_file(str(files[name]))
                results[name] = {
                    "mom2": data["mom2"],
                    "tokens": int(data["tokens"]),
                    "cached": True,
                    "fingerprint": fps[name],
                    "file": str(files[name]),
                }
                continue
        missing.append(name)
    if not missing:
        return results

    start = time.perf_counter()
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(missing, 0)
    last = max(missing, key=order.index)

    def hook_for(name: str):
        def hook(_m, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            s = x.t() @ x
            sums[name] = sums[name] + s.double() if name in sums else s.double()
            counts[name] += x.shape[0]
            if name == last:
                raise StopForward

        return hook

    handles = [lm.model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in missing]
    n = windows.shape[0]
    task = progress.task(description, n) if progress is not None else None
    advance = task.__enter__() if task is not None else (lambda k=1: None)
    try:
        with torch.no_grad():
            for b in range(0, n, batch_size):
                chunk = windows[b : b + batch_size].to(lm.device)
                try:
                    lm.model(chunk, use_cache=False)
                except StopForward:
                    pass
                advance(chunk.shape[0])
    finally:
        for h in handles:
            h.remove()
        if task is not None:
            task.__exit__(None, None, None)
    elapsed = time.perf_counter() - start
    for name in missing:
        mom2 = sums[name] / counts[name]
        results[name] = {
            "mom2": mom2,
            "tokens": counts[name],
            "cached": False,
            "fingerprint": fps[name],
            "elapsed_s": elapsed,
            "file": str(files[name]) if name in files else None,
        }
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = files[name].with_suffix(".tmp")
            save_file({"mom2": mom2.contiguous(), "tokens": torch.tensor(counts[name])}, str(tmp))
            follow_umask(tmp)  # safetensors writes 0600 whatever the umask
            tmp.replace(files[name])
            files[name].with_suffix(".json").write_text(
                json.dumps(
                    {
                        "module": name,
                        "weights_fingerprint": fps[name],
                        "windows_sha1": windows_fp,
                        "windows": list(windows.shape),
                        "tokens": counts[name],
                        "layer": _decoder_index(lm, name),
                        "model": getattr(lm, "source", ""),
                        "seconds": round(elapsed, 2),
                    },
                    indent=1,
                )
            )
    return results
