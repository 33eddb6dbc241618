from lmcompose import hookimpl


@hookimpl
def register_interventions(register):
    register(
        "lmcompose_sparsegpt.intervention:SparseGPT",
        name="sparsegpt",
        summary="SparseGPT one-shot pruning with OBS updates, unstructured or N:M (kind prune)",
    )
