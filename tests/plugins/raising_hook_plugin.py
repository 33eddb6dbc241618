"""A plugin that imports fine but whose hook raises."""

from lmcompose import hookimpl


@hookimpl
def register_metrics(register):
    raise ValueError("metric registration failed on purpose")
