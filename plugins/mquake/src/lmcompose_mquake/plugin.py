from lmcompose import hookimpl


@hookimpl
def register_datasets(register):
    register(
        "lmcompose_mquake.dataset:MQuAKE",
        name="mquake",
        kind="edits",
        summary="MQuAKE multi-hop cases (1-4 edits each, 3 questions)",
    )
