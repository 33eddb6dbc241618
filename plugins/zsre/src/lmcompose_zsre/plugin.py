from lmcompose import hookimpl


@hookimpl
def register_datasets(register):
    register(
        "lmcompose_zsre.dataset:ZsRE",
        name="zsre",
        kind="edits",
        summary="zsRE QA edits, EasyEdit convention (target alt, true answers[0])",
    )
    register(
        "lmcompose_zsre.dataset:ZsRERome",
        name="zsre-rome",
        kind="edits",
        summary="zsRE QA edits, ROME/MEMIT convention (target answers[0])",
    )
