"""A test plugin whose pruner kills the process it runs in (a Ray worker dying mid-task).

``crashprune:sparsity=0.5,marker=/tmp/x`` prunes like magnitude, except that the first
apply on a model (while ``marker`` does not exist) creates ``marker`` and SIGKILLs its own
process; with ``always=true`` every apply does. The study tests put this module and a
dist-info folder on the PYTHONPATH of a local Ray cluster, so workers load it.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

from lmcompose import hookimpl
from lmcompose.interventions.magnitude import Magnitude
from lmcompose.interventions.magnitude.config import MagnitudeConfig


@dataclass
class CrashConfig(MagnitudeConfig):
    marker: str = field(default="", metadata={"help": "file that records the first crash ('' = never crash)"})
    always: bool = field(default=False, metadata={"help": "crash on every apply, not only the first"})


class CrashPrune(Magnitude):
    """Magnitude pruning that kills its process once (or always)."""

    name = "crashprune"
    Config = CrashConfig

    def apply(self, lm, ctx):
        if self.config.marker and (self.config.always or not os.path.exists(self.config.marker)):
            with open(self.config.marker, "a") as f:
                f.write(f"{os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return super().apply(lm, ctx)


@hookimpl
def register_interventions(register):
    register(CrashPrune, name="crashprune", summary="magnitude pruning that kills its process (tests)")
