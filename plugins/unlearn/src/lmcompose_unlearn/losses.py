"""The unlearning losses as pure tensor functions (each tested against a hand computation).

* ``ga_loss``: -NLL(forget) (gradient ascent);
* ``gd_loss``: -NLL(forget) + w NLL(retain) (gradient difference);
* ``npo_loss``: -(2/β) log σ(-β (NLL_ref - NLL)) per forget sequence, averaged
  (open-unlearning's ``compute_dpo_loss`` with no winning answer: NLL summed over a
  sequence's labelled tokens, the reference model's without gradient);
* ``rmu_loss``: MSE(h_l(forget), u) + α MSE(h_l(retain), h_l^frozen(retain)) over the real
  (unpadded) token positions.

``sequence_nll`` gives each sequence's NLL over its labelled tokens (mean or sum).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "Example",
    "control_vector",
    "ga_loss",
    "gd_loss",
    "masked_mse",
    "npo_loss",
    "pad_batch",
    "rmu_loss",
    "sequence_nll",
]

#: token ids, and the first position whose token is a label (predicted from the one before)
Example = tuple[list[int], int]


def pad_batch(
    batch: Sequence[Example], pad: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, and the label mask (1 where a position's token is a
    label: from each example's start to its end)."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.zeros((len(batch), width), dtype=torch.bool)
    for i, (seq, start) in enumerate(batch):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[i, : len(seq)] = 1
        labels[i, max(1, start) : len(seq)] = True
    return ids.to(device), attn.to(device), labels.to(device)


def sequence_nll(
    logits: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Each sequence's NLL of its label tokens (``labels``: bool, B x T, True at a label
    position), from ``logits`` (B x T x V, position t predicting token t+1): the mean over
    the labels (``reduction="mean"``) or their sum (``"sum"``, open-unlearning's NPO)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = labels[:, 1:].to(tok.dtype)
    total = -(tok * mask).sum(dim=1)
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise ValueError(f"reduction {reduction!r} is not mean or sum")
    return total / mask.sum(dim=1).clamp_min(1.0)


def ga_loss(forget_nll: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: minus the mean forget NLL."""
    return -forget_nll.mean()


def gd_loss(forget_nll: torch.Tensor, retain_nll: torch.Tensor, retain_weight: float) -> torch.Tensor:
    """Gradient difference: -NLL(forget) + w NLL(retain), each a batch mean."""
    return -forget_nll.mean() + retain_weight * retain_nll.mean()


def npo_loss(nll: torch.Tensor, ref_nll: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: mean over sequences of -(2/β) log σ(-β (NLL_ref - NLL)). At NLL = NLL_ref it is
    (2/β) log 2; it falls as the model's NLL rises above the reference's and flattens out
    (unlike -NLL, which falls without bound)."""
    return (-2.0 / beta * F.logsigmoid(-beta * (ref_nll.detach() - nll))).mean()


def masked_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (h - target)² over the positions where ``mask`` (B x T) is true and every hidden
    unit: ``F.mse_loss`` restricted to real tokens (``target`` broadcasts, e.g. 1 x 1 x H)."""
    sq = (h.float() - target.float()).pow(2).sum(dim=-1)  # B x T
    m = mask.to(sq.dtype)
    return (sq * m).sum() / (m.sum().clamp_min(1.0) * h.shape[-1])


def rmu_loss(
    h_forget: torch.Tensor,
    control: torch.Tensor,
    forget_mask: torch.Tensor,
    h_retain: torch.Tensor,
    h_retain_frozen: torch.Tensor,
    retain_mask: torch.Tensor,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RMU: (total, forget term, weighted retain term); the forget term steers the layer's
    output on forget text to the control vector, the retain term keeps it on retain text."""
    forget = masked_mse(h_forget, control, forget_mask)
    retain = alpha * masked_mse(h_retain, h_retain_frozen.detach(), retain_mask)
    return forget + retain, forget, retain


def control_vector(hidden: int, coeff: float, generator: torch.Generator) -> torch.Tensor:
    """u = c · r/|r|, r uniform in [0, 1)^hidden (the WMDP code's ``torch.rand``), 1 x 1 x hidden."""
    r = torch.rand(1, 1, hidden, generator=generator, dtype=torch.float32)
    return r / r.norm() * coeff
