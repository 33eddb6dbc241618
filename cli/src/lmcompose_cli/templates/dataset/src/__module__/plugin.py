from lmcompose import hookimpl


@hookimpl
def register_datasets(register):
    register("{{module}}.dataset:{{Class}}", name="{{name}}", kind="edits", summary="{{summary}}")
