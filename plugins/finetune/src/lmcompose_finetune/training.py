"""The training loop both fine-tuning editors share: teacher-forced NLL of each edit's target
tokens after its prompt, full-batch Adam steps (gradients accumulated over padded chunks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from lmcompose.api import EditRecord
from lmcompose.editing import length_groups, pad_id, target_ids

if TYPE_CHECKING:
    from lmcompose import LM
    from transformers import PreTrainedTokenizerBase

__all__ = ["TrainResult", "edit_sequences", "target_nll", "train_on_edits"]


def edit_sequences(tok: PreTrainedTokenizerBase, records: Sequence[EditRecord]) -> list[tuple[list[int], int]]:
    """(prompt + target token ids, number of prompt tokens) of each edit."""
    out = []
    for r in records:
        prompt = list(tok(r.prompt, add_special_tokens=True).input_ids)
        out.append((prompt + target_ids(tok, r), len(prompt)))
    return out


def target_nll(
    model: torch.nn.Module, seqs: Sequence[tuple[list[int], int]], pad: int, device: torch.device | str
) -> torch.Tensor:
    """Each sequence's mean negative log-likelihood of its target tokens (right-padded, masked)."""
    width = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, _) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = []
    for i, (s, p) in enumerate(seqs):
        pos = torch.arange(p - 1, len(s) - 1, device=logp.device)
        tgt = torch.tensor(s[p:], device=logp.device)
        nll.append(-logp[i, pos, tgt].mean())
    return torch.stack(nll)


@dataclass
class TrainResult:
    steps: int
    loss_first: float
    loss_final: float


def train_on_edits(
    lm: LM,
    records: Sequence[EditRecord],
    params: Sequence[torch.nn.Parameter],
    steps: int,
    lr: float,
    weight_decay: float,
    early_stop: float,
    max_tokens: int,
    after_step: Callable[[], None] | None = None,
    advance: Callable[[int], None] | None = None,
) -> TrainResult:
    """Adam on ``params`` (every other parameter frozen meanwhile) to lower the mean target NLL
    of ``records``; ``after_step`` runs after each update (FT-L's clamp). Stops early once the
    mean NLL is below ``early_stop``."""
    model = lm.model
    seqs = edit_sequences(lm.tokenizer, records)
    chunks = length_groups([len(s) for s, _ in seqs], max_tokens)
    pad = pad_id(lm.tokenizer)
    trainable = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in trainable]
    for p in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    # a bf16 or fp16 parameter is trained through a float32 master copy: Adam's state and
    # epsilon (1e-8, zero in fp16) in float32, each step's result rounded into the model
    masters = [p.detach().float().clone() if p.dtype != torch.float32 else None for p in params]
    opt = torch.optim.Adam(
        [m if m is not None else p for p, m in zip(params, masters, strict=True)], lr=lr, weight_decay=weight_decay
    )
    # the model stays in eval mode: no dropout, so a seed fixes the whole run
    first = final = float("nan")
    done = 0
    try:
        for step in range(steps + 1):
            opt.zero_grad(set_to_none=True)
            for p in params:
                p.grad = None
            total = 0.0
            for chunk in chunks:
                nll = target_nll(model, [seqs[i] for i in chunk], pad, lm.device)
                loss = nll.sum() / len(seqs)
                total += float(loss.detach())
                if step < steps:
                    loss.backward()
            if step == 0:
                first = total
            final = total
            if step == steps or total < early_stop:
                break
            for p, m in zip(params, masters, strict=True):
                if m is not None:
                    m.grad = None if p.grad is None else p.grad.float()
            opt.step()
            done += 1
            with torch.no_grad():
                for p, m in zip(params, masters, strict=True):
                    if m is not None:
                        p.copy_(m)
            if after_step is not None:
                after_step()
                with torch.no_grad():  # the constraint as the model holds it
                    for p, m in zip(params, masters, strict=True):
                        if m is not None:
                            m.copy_(p)
            if advance is not None:
                advance(1)
    finally:
        opt.zero_grad(set_to_none=True)
        for p in params:
            p.grad = None
        for p in frozen:
            p.requires_grad_(True)
    return TrainResult(done, first, final)
