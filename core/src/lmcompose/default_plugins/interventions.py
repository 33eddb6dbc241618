from __future__ import annotations

from lmcompose.hookspecs import Register, hookimpl


@hookimpl
def register_interventions(register: Register) -> None:
    register(
        "lmcompose.interventions.magnitude.intervention:Magnitude",
        name="magnitude",
        summary="magnitude pruning, unstructured or N:M (kind prune)",
    )
    register(
        "lmcompose.interventions.rtn.intervention:RTN",
        name="rtn",
        summary="round-to-nearest weight quantization (kind quantize)",
    )
