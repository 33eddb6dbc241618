from lmcompose import hookimpl


@hookimpl
def register_interventions(register):
    register(
        "lmcompose_memit.intervention:MEMIT",
        name="memit",
        summary="MEMIT mass editing: v* optimisation, residual spread over MLP layers (kind edit)",
    )
