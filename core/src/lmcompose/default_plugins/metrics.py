from __future__ import annotations

from lmcompose.hookspecs import Register, hookimpl


@hookimpl
def register_metrics(register: Register) -> None:
    register(
        "lmcompose.metrics.perplexity:Perplexity",
        name="perplexity",
        summary="perplexity and mean token NLL on wikitext-2 test",
    )
    register(
        "lmcompose.metrics.compression:AverageBits",
        name="avg_bits",
        summary="average bits per weight, sparsity, parameter bytes",
    )
    register(
        "lmcompose.metrics.compression:Flops",
        name="flops",
        summary="FLOPs of a 1x128 forward pass scaled by density; latency",
    )
    register(
        "lmcompose.metrics.edits:EditMetrics",
        name="edit",
        summary="edit success, generalization, locality (preservation/prob), neighbour knowledge, edit/unedited NLL",
    )
