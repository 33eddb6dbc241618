from lmcompose.api import Context
from lmcompose.compose import build_metrics
from lmcompose.models.tiny import tiny_model


def test_{{module}}_metric_is_the_mean_absolute_weight():
    lm = tiny_model("llama")
    (metric,) = build_metrics(["{{name}}"], None)
    value = metric.compute(lm, Context())["{{name}}"]
    weights = [lm.weight(n) for n, _ in lm.linear_layers()]
    expected = sum(float(w.abs().sum()) for w in weights) / sum(w.numel() for w in weights)
    assert abs(value - expected) < 1e-6
