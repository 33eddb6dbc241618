from lmcompose import hookimpl


@hookimpl
def register_interventions(register):
    register(
        "lmcompose_finetune.intervention:FineTune",
        name="ft",
        summary="FT-L: constrained fine-tuning of MLP output projections on the edit targets (kind edit)",
    )
    register(
        "lmcompose_finetune.intervention:LoRA",
        name="lora",
        summary="LoRA (peft) trained on the edit targets, merged into the weights (kind edit)",
    )
