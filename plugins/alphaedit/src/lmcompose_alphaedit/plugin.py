from lmcompose import hookimpl


@hookimpl
def register_interventions(register):
    register(
        "lmcompose_alphaedit.intervention:AlphaEdit",
        name="alphaedit",
        summary="AlphaEdit: MEMIT's v* and keys, updates projected onto the preserved keys' null space (kind edit)",
    )
