from __future__ import annotations

from lmcompose.hookspecs import Register, hookimpl


@hookimpl
def register_architectures(register: Register) -> None:
    from lmcompose.models.arch import ARCHITECTURES

    for spec in ARCHITECTURES:
        register(spec, name=spec.name, summary=spec.summary)
