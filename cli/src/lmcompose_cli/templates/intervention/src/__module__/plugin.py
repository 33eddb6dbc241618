from lmcompose import hookimpl


@hookimpl
def register_interventions(register):
    # A lazy "module:Class" string: `lmcompose plugins` stays fast (no torch import).
    register("{{module}}.intervention:{{Class}}", name="{{name}}", summary="{{summary}}")
