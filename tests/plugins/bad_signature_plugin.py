"""A plugin whose hook implementation has a parameter the spec does not know."""

from lmcompose import hookimpl


@hookimpl
def register_interventions(registrar):
    pass
