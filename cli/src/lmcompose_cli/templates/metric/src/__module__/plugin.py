from lmcompose import hookimpl


@hookimpl
def register_metrics(register):
    register("{{module}}.metric:{{Class}}", name="{{name}}", summary="{{summary}}")
