"""What changes a run's numbers beyond its settings and inputs, recorded in config.yaml under
``numerics:`` and checked on resume.

* ``threads``: torch's intra-op thread count the computation used (``--threads``; else 1 in
  deterministic mode; else the local default — the cores this process may use for a study,
  torch's current pool for a run or sweep — or a Ray task's CPU request). Another count
  changes the float reduction order, so the last digits; MEMIT's optimisation amplifies that
  to the third digit.
* ``deterministic``: whether ``torch.use_deterministic_algorithms(True)`` was on.
* ``torch``, ``blas``, ``lapack`` (and ``mkl``, ``onednn``, ``cuda`` where torch has them):
  the library versions and the linear-algebra backend the kernels came from.
* ``batch_sizes``: each metric's ``batch_size`` (padding and batched kernels change the last
  digits of what is evaluated).

A resume whose value differs from the recorded one is refused, naming each setting, its
recorded and current value and the fix (:func:`check_numerics`); a value the run did not
record (a folder written before it was) is accepted.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from lmcompose.errors import UsageError

if TYPE_CHECKING:
    from lmcompose.api import Metric

__all__ = [
    "NONDETERMINISTIC_MARK",
    "blas_backend",
    "check_numerics",
    "deterministic_mode",
    "nondeterministic_error",
    "nondeterministic_op",
    "numerics_changes",
    "numerics_for",
    "record_numerics",
    "run_threads",
    "set_deterministic",
]

#: what torch's message says when an op has no deterministic kernel in deterministic mode
NONDETERMINISTIC_MARK = "does not have a deterministic implementation"
_CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"


def blas_backend(config: str | None = None) -> dict[str, str]:
    """The BLAS and LAPACK torch was built with, from ``torch.__config__.show()`` (``config``:
    that text, for tests): ``blas``/``lapack`` (``mkl``, ``open`` for OpenBLAS, ...; ``unknown``
    when the build does not say), and the MKL and oneDNN versions when the build has them."""
    if config is None:
        import torch

        config = torch.__config__.show()
    info = dict(re.findall(r"\b(BLAS_INFO|LAPACK_INFO)=([^,\s]+)", config))
    out = {"blas": info.get("BLAS_INFO", "unknown"), "lapack": info.get("LAPACK_INFO", "unknown")}
    mkl = re.search(r"Math Kernel Library Version (\d[\w.]*)", config)
    if mkl:
        out["mkl"] = mkl.group(1)
    onednn = re.search(r"MKL-DNN v(\d[\w.]*)", config)
    if onednn:
        out["onednn"] = onednn.group(1)
    return out


def _batch_sizes(metrics: Sequence[Metric]) -> dict[str, int]:
    sizes = {}
    for metric in metrics:
        size = getattr(getattr(metric, "config", None), "batch_size", None)
        if isinstance(size, int) and not isinstance(size, bool):
            sizes[metric.name] = size
    return sizes


def record_numerics(threads: int, deterministic: bool, metrics: Sequence[Metric]) -> dict[str, object]:
    """The ``numerics:`` of config.yaml for a computation in this process with ``threads``
    torch threads, deterministic mode asked for or not (on also when torch already has it
    on), evaluating ``metrics``."""
    import torch

    out: dict[str, object] = {
        "threads": threads,
        "deterministic": bool(deterministic or torch.are_deterministic_algorithms_enabled()),
        "torch": str(torch.__version__),
        **blas_backend(),
    }
    if torch.version.cuda:
        out["cuda"] = str(torch.version.cuda)
    out["batch_sizes"] = _batch_sizes(metrics)
    return out


def run_threads(threads: int | None, deterministic: bool, default: int | None) -> int:
    """The thread count a run computes with: ``threads`` (``--threads``); else 1 in
    deterministic mode; else ``default`` (None: the cores this process may use)."""
    from lmcompose.engine.threads import available_cores, check_threads

    if threads is not None:
        return check_threads(threads)
    if deterministic:
        return 1
    return default if default is not None else available_cores()


@contextmanager
def numerics_for(
    threads: int | None, deterministic: bool, metrics: Sequence[Metric], default: int | None = None
) -> Iterator[dict[str, object]]:
    """Run a block with the thread count of :func:`run_threads` and deterministic mode as asked
    (:func:`deterministic_mode`), both restored after; yields the block's ``numerics:`` record."""
    from lmcompose.engine.threads import threads_for

    with threads_for(run_threads(threads, deterministic, default)) as n, deterministic_mode(deterministic):
        yield record_numerics(n, deterministic, metrics)


def numerics_changes(recorded: Mapping[str, object], current: Mapping[str, object]) -> list[tuple[str, object, object]]:
    """(key, recorded value, current value) for every value ``recorded`` holds that
    ``current`` does not match (``batch_sizes.edit`` for a nested one). A value only
    ``current`` has is no change: the run was written before it was recorded."""
    out = []
    for key, old in recorded.items():
        new = current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out += [(f"{key}.{k}", a, b) for k, a, b in numerics_changes(old, new)]
        elif json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True, default=str):
            out.append((key, old, new))
    return out


def _fix(key: str, old: object) -> str:
    if key == "threads":
        return f"--threads {old}"
    if key == "deterministic":
        return "--deterministic" if old else "without --deterministic"
    if key.startswith("batch_sizes."):
        return f"{key.split('.', 1)[1]}'s batch_size {old} (the lmcompose version that recorded it)"
    return f"{key} {old}"


def check_numerics(recorded: object, current: Mapping[str, object] | None, where: str, run_id: str) -> None:
    """Refuse a resume whose numerics differ from the ``recorded`` ones: one UsageError naming
    each setting, its recorded and current value, and the fix."""
    if not isinstance(recorded, Mapping) or not current:
        return
    changes = numerics_changes(recorded, current)
    if not changes:
        return

    def show(value: object) -> str:
        return json.dumps(value, default=str) if value is not None else "none"

    what = "; ".join(f"{key}: {show(old)} recorded, {show(new)} now" for key, old, new in changes)
    fixes = ", ".join(_fix(key, old) for key, old, _ in changes)
    raise UsageError(
        f"{where}: run {run_id} was computed with other numerics than this resume would use, so its rows "
        f"would not match the ones already written ({what}). Rerun as recorded ({fixes}), or start a new run "
        "in another --out"
    )


def nondeterministic_op(exc: BaseException) -> str | None:
    """The op named by torch's "X does not have a deterministic implementation" error, else None."""
    if not isinstance(exc, RuntimeError):
        return None
    match = re.search(rf"^\s*(.+?) {NONDETERMINISTIC_MARK}", str(exc), re.M)
    return match.group(1).strip() if match else None


def nondeterministic_error(exc: BaseException, what: str = "this run") -> UsageError | None:
    """The message for an op without a deterministic kernel met in deterministic mode (``what``:
    the step or metric that ran it), or None when ``exc`` is not that error."""
    op = nondeterministic_op(exc)
    if op is None:
        return None
    return UsageError(
        f"{what} uses the torch op {op}, which has no deterministic implementation on this device, and "
        "deterministic mode is on (--deterministic, or deterministic: true in the study file): run without "
        "--deterministic, or use another method"
    )


def set_deterministic(on: bool) -> None:
    """Turn torch's deterministic algorithms on or off for this process (a Ray task sets it
    either way: its worker runs task after task). On a GPU cuBLAS needs
    ``CUBLAS_WORKSPACE_CONFIG`` for deterministic matmuls: set to ``:4096:8`` unless already set."""
    import torch

    if on:
        os.environ.setdefault(_CUBLAS_ENV, ":4096:8")
    torch.use_deterministic_algorithms(on)


@contextmanager
def deterministic_mode(on: bool) -> Iterator[bool]:
    """Run a block with deterministic algorithms on when ``on`` (:func:`set_deterministic`;
    never turned off here: a caller's own setting stays), restored after, with
    ``CUBLAS_WORKSPACE_CONFIG``; yields whether it is on. An op without a deterministic kernel
    raised in the block becomes one message naming it (:func:`nondeterministic_error`)."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    set_env = on and _CUBLAS_ENV not in os.environ
    if on:
        set_deterministic(True)
    try:
        yield on or before
    except RuntimeError as exc:
        error = nondeterministic_error(exc) if (on or before) else None
        if error is None:
            raise
        raise error from exc
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
        if set_env:
            os.environ.pop(_CUBLAS_ENV, None)
