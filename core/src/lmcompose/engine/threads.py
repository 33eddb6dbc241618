"""How many threads torch's intra-op pool should use: the cores this process may really run
on, not the machine's count.

On a shared machine torch's default (every core the machine has) oversubscribes: measured
here, a SmolLM2-135M forward took 6.9-8.8 s with 2 threads while another job held one of
the two cores, against 4.1 s with 1 thread. The local executor sets the pool to the cores
it may use (its CPU affinity, capped by a cgroup CPU quota); a Ray task sets it to its CPU
request; ``--threads N`` overrides both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lmcompose._limits import MAX_THREADS
from lmcompose.errors import ConfigError

__all__ = ["available_cores", "cgroup_cpu_limit", "check_threads", "current_threads", "set_threads", "threads_for"]


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max``, or v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None when there is no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max" and float(period) > 0:
            return float(quota) / float(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        q = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
        p = float((root / "cpu" / "cpu.cfs_period_us").read_text())
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def available_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by the cgroup quota (rounded
    up: a quota of 1.5 cores lets two threads make progress)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def check_threads(n: object, what: str = "--threads") -> int:
    """``n`` if it is a thread count (a whole number from 1 to MAX_THREADS), else one
    ConfigError: a pool of 100,000 threads does not start (the BLAS pool fails and the
    process crashes), so it is refused before anything is loaded, on any executor."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_THREADS:
        raise ConfigError(f"{what} {n!r}: give a whole number of threads from 1 to {MAX_THREADS}")
    return n


def current_threads() -> int:
    """torch's intra-op thread count now (what a run or sweep without ``--threads`` uses)."""
    import torch

    return torch.get_num_threads()


def set_threads(n: int | None) -> int:
    """Set torch's intra-op thread count to ``n`` (None: :func:`available_cores`); returns it."""
    n = check_threads(available_cores() if n is None else n)
    import torch

    torch.set_num_threads(n)
    return n


@contextmanager
def threads_for(n: int | None) -> Iterator[int]:
    """Run a block with torch's pool set as :func:`set_threads` does, then restore it."""
    import torch

    before = torch.get_num_threads()
    try:
        yield set_threads(n)
    finally:
        torch.set_num_threads(before)
