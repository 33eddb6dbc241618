from lmcompose.hookspecs import hookimpl


@hookimpl
def register_architectures(register):
    from lmcompose.models.arch import ARCHITECTURES

    for spec in ARCHITECTURES:
        register(spec, name=spec.name, summary=spec.summary)
