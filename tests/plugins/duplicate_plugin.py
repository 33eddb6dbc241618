"""A plugin that registers a name a built-in already uses."""

from lmcompose import hookimpl


@hookimpl
def register_interventions(register):
    register("lmcompose.interventions.magnitude:Magnitude", name="magnitude")
