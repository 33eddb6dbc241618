"""The constraint policy (``--keep-compressed``): the one place its rules live.

* ``none`` — steps run as written;
* ``project`` (default) — after every step, each earlier compressor's ``project()`` runs in
  order, so a pruned model stays pruned and a quantized model stays on its grid;
* ``recompress`` — the paper's code: no projection in between; at the end, every compressor
  that ran before a training step (an editor, kind ``edit``, or an unlearner, kind
  ``unlearn``) is run again (fresh calibration) and evaluated once more.

:func:`rerun_after` says which steps of an order ``recompress`` runs again (the plan turns
them into extra positions); :func:`project_earlier` is what ``project`` does after a step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from lmcompose.api import Intervention
    from lmcompose.models.handle import LM

POLICIES = ("none", "project", "recompress")
EDIT_KIND = "edit"
UNLEARN_KIND = "unlearn"
#: the kinds whose steps train weights a compressor before them had fixed
TRAINING_KINDS = (EDIT_KIND, UNLEARN_KIND)

__all__ = ["EDIT_KIND", "POLICIES", "TRAINING_KINDS", "UNLEARN_KIND", "project_earlier", "rerun_after"]


def rerun_after(kinds: Sequence[str], has_project: Sequence[bool], policy: str) -> list[int]:
    """Positions (indices into the order) of the steps ``policy`` runs again at the end.

    Under ``recompress`` that is every compressor (a step with a ``project()`` whose kind is
    not a training kind) followed later in the order by a training step (an edit or an
    unlearner, :data:`TRAINING_KINDS`); under the other policies, none.
    """
    if policy != "recompress":
        return []
    return [
        j
        for j, (kind, proj) in enumerate(zip(kinds, has_project, strict=True))
        if proj and kind not in TRAINING_KINDS and any(k in TRAINING_KINDS for k in kinds[j + 1 :])
    ]


def project_earlier(policy: str, earlier: Sequence[Intervention], lm: LM) -> float:
    """After a step: under ``project``, re-impose every earlier step's constraint in order.
    Returns the seconds it took (0 under the other policies)."""
    if policy != "project":
        return 0.0
    start = time.perf_counter()
    for step in earlier:
        if step.has_project():
            step.project(lm)
    return time.perf_counter() - start
