"""The largest values lmcompose accepts for settings that have no natural bound of their own.

Without a bound such a value passes validation and fails late, deep inside a library (a
seed past 64 bits in torch's generator, a thread pool larger than the process may start,
a shard number past a C integer). Each is checked where it is read, with a message that
gives the range; the bounds live here so every reader gives the same one. A leaf module:
it imports nothing from lmcompose.
"""

from __future__ import annotations

#: seeds: 0 to 2**32 - 1 (what numpy and most seeded libraries take); a seed plus a
#: replicate or a calibration offset stays far inside torch's 64-bit generator seed
MAX_SEED = 2**32 - 1
#: torch threads per process (and noise_floor.threads); far above any machine's cores, far
#: below the thread count at which the BLAS pool fails to start (RLIMIT_NPROC)
MAX_THREADS = 1024
#: GPUs one Ray task asks for (fractions share one GPU)
MAX_GPUS_PER_TASK = 64
#: top-k next tokens recorded per row (also cut to the model's vocabulary when it is smaller)
MAX_TOPK = 1000
#: how deep lists and mappings may nest in a YAML or JSON file lmcompose reads (a config,
#: a study, a dataset, a results row); real files nest a handful of levels
MAX_NESTING = 100
