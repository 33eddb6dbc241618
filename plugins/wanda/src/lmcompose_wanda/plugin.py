from lmcompose import hookimpl


@hookimpl
def register_interventions(register):
    register(
        "lmcompose_wanda.intervention:Wanda",
        name="wanda",
        summary="Wanda pruning by |W| x input-activation norm, per output row, unstructured or N:M (kind prune)",
    )
