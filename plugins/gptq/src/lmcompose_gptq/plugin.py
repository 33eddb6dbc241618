from lmcompose import hookimpl


@hookimpl
def register_interventions(register):
    register(
        "lmcompose_gptq.intervention:GPTQ",
        name="gptq",
        summary="GPTQ weight quantization: Hessian-aware rounding, groups, act-order, sym/asym (kind quantize)",
    )
