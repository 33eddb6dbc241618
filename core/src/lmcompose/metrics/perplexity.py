"""Perplexity on wikitext-2 test, the GPTQ/SparseGPT/Wanda protocol.

The raw test rows are joined with "\\n\\n", tokenized once, and cut into non-overlapping
windows of ``min(model max positions, seqlen)`` tokens; the first ``max_tokens // seqlen``
windows are scored (all windows with ``max_tokens=0``). Perplexity is
exp(mean NLL over every predicted token), ``general_nll`` that mean NLL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmcompose.api import Context, Metric

if TYPE_CHECKING:
    from lmcompose.models.handle import LM


@dataclass
class PerplexityConfig:
    seqlen: int = field(
        default=1024,
        metadata={"help": "window length in tokens (capped at the model's max positions)", "range": (8, 1 << 20)},
    )
    max_tokens: int = field(
        default=8192,
        metadata={
            "help": "token budget: the first max_tokens // seqlen windows; 0 = the whole split",
            "range": (0, 1 << 40),
        },
    )
    batch_size: int = field(default=2, metadata={"help": "windows per forward pass", "range": (1, 1024)})


class Perplexity(Metric):
    """Perplexity and mean token NLL on wikitext-2 test (bundled sample text if absent)."""

    name = "perplexity"
    keys = ("perplexity", "general_nll", "ppl_tokens", "ppl_seqlen")
    higher_is_better = {"perplexity": False, "general_nll": False, "ppl_tokens": None, "ppl_seqlen": None}
    Config = PerplexityConfig
    config: PerplexityConfig

    def windows(self, lm: LM, ctx: Context):
        import torch

        from lmcompose.data.corpora import corpus_text
        from lmcompose.data.windows import tokenize_corpus

        seqlen = min(self.config.seqlen, lm.max_positions)
        key = ("ppl_windows", id(lm.tokenizer), seqlen, self.config.max_tokens)
        if key not in ctx.state:
            text, where = corpus_text("test", ctx)
            ids = tokenize_corpus(lm.tokenizer, text, where)
            if ids.numel() < 2 * 8:
                from lmcompose.data.corpora import longer_text_advice
                from lmcompose.errors import DataError

                raise DataError(
                    f"perplexity text {where} is too short ({ids.numel()} tokens; at least 16 are needed): "
                    + longer_text_advice(where)
                )
            if ids.numel() < seqlen:
                seqlen = ids.numel()
            n = ids.numel() // seqlen
            if self.config.max_tokens > 0:
                n = max(1, min(n, self.config.max_tokens // seqlen))
            ctx.state[key] = (ids[: n * seqlen].view(n, seqlen).clone(), where)
        windows, where = ctx.state[key]
        return windows, where, torch

    def compute(self, lm: LM, ctx: Context) -> dict[str, Any]:
        windows, where, torch = self.windows(lm, ctx)
        total_nll, total_tokens = 0.0, 0
        model = lm.model
        with torch.inference_mode(), ctx.progress.task("perplexity", len(windows)) as advance:
            for start in range(0, len(windows), self.config.batch_size):
                batch = windows[start : start + self.config.batch_size].to(lm.device)
                logits = model(batch).logits[:, :-1].float()
                targets = batch[:, 1:]
                nll = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
                )
                total_nll += float(nll)
                total_tokens += targets.numel()
                advance(len(batch))
        mean = total_nll / total_tokens
        return {
            # NaN stays NaN (the executor flags it); only a finite, huge loss overflows to inf.
            "perplexity": math.exp(mean) if mean < 700 or math.isnan(mean) else float("inf"),
            "general_nll": mean,
            "ppl_tokens": windows.numel(),
            "ppl_seqlen": windows.shape[1],
            "ppl_corpus": where,
        }
