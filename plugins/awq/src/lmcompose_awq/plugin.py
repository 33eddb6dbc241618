from lmcompose import hookimpl


@hookimpl
def register_interventions(register):
    register(
        "lmcompose_awq.intervention:AWQ",
        name="awq",
        summary="AWQ weight quantization: activation-aware scales folded into the preceding op, clip search (kind "
        "quantize)",
    )
