from lmcompose import hookimpl


@hookimpl
def register_metrics(register):
    register(
        "lmcompose_lmeval.metric:LMEval",
        name="lmeval",
        default=False,
        summary="any lm-evaluation-harness task on the in-memory model (HFLM, no reload); default lmcompose_facts; "
        "opt-in: --metrics ...,lmeval",
    )
