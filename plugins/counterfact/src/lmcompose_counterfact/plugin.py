from lmcompose import hookimpl


@hookimpl
def register_datasets(register):
    register(
        "lmcompose_counterfact.dataset:CounterFact",
        name="counterfact",
        kind="edits",
        summary="CounterFact (ROME/MEMIT or EasyEdit schema); default counterfact/ in the data folder",
    )
