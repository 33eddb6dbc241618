"""{{name}}: the mean absolute weight of the decoder projections (an example metric)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcompose import Context, Metric

if TYPE_CHECKING:
    from lmcompose import LM


class {{Class}}(Metric):
    """Mean |w| over the decoder projections."""

    name = "{{name}}"
    keys = ("{{name}}",)
    higher_is_better = {"{{name}}": None}

    def compute(self, lm: LM, ctx: Context) -> dict[str, float | None]:
        total, count = 0.0, 0
        for name, _module in lm.linear_layers():
            w = lm.weight(name)
            total += float(w.abs().sum())
            count += w.numel()
        return {"{{name}}": total / count}
