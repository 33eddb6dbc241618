from lmcompose import hookimpl


@hookimpl
def register_interventions(register):
    register(
        "lmcompose_unlearn.intervention:GradientAscent",
        name="ga",
        summary="GA: gradient ascent on the forget facts (-NLL), upper layers trained (kind unlearn)",
    )
    register(
        "lmcompose_unlearn.intervention:GradientDifference",
        name="gd",
        summary="GD: gradient difference, -NLL(forget) + w NLL(retain) (kind unlearn)",
    )
    register(
        "lmcompose_unlearn.intervention:NPO",
        name="npo",
        summary="NPO: negative preference optimisation against the model before it, retain NLL term (kind unlearn)",
    )
    register(
        "lmcompose_unlearn.fictitious:InsertFictitious",
        name="fictitious",
        summary="insert TOFU-style facts about made-up subjects by a short fine-tune, before unlearning them "
        "(kind insert)",
    )
    register(
        "lmcompose_unlearn.intervention:RMU",
        name="rmu",
        summary="RMU: steer layer l's residual on forget text to a random vector, MLP down projections of l-2..l "
        "(kind unlearn)",
    )


@hookimpl
def register_metrics(register):
    register(
        "lmcompose_unlearn.metric:UnlearnMetrics",
        name="unlearn",
        default=False,
        summary="forget accuracy (lower is better) and retain accuracy on four-way questions (WMDP format), free-form "
        "QA, TOFU's truth ratios, forget quality and model utility; opt-in: --metrics ...,unlearn",
    )
