"""Locate-then-edit, shared by the editors (MEMIT, AlphaEdit): edit rows, partial forwards,
v* optimisation, keys, the spread of the residual over the edit layers, presets by shape.

Follows the MEMIT code (github.com/kmeng01/memit: compute_z.py, compute_ks.py, memit_main.py)
step by step; the differences are only in how the work is batched:

* v* is optimised for all edits of a batch at once: one (edits x hidden) delta, a summed
  loss (each edit's rows depend only on its own delta, so the gradients are the per-edit
  ones), Adam kept per row (the same update as one Adam per edit), and an edit whose loss
  falls below the threshold stops and leaves the batch.
* delta is added to the residual stream at the output of the last edit layer, so the layers
  below it cannot change during the optimisation: their output is computed once, and each
  step runs only the layers above it, on the positions that need logits.
* nothing before the subject's last token depends on delta (attention is causal), so each
  sequence is split there: the prefix runs once, without gradient, and its keys and values
  are kept for every layer above the edit; each step runs only the suffix (the subject's
  last token onward) through those layers, attending to the kept prefix. On CounterFact
  with MEMIT's context templates the suffix is about a third of the tokens.
* sequences are grouped by prefix length and their suffixes right-padded; with causal
  attention the real tokens never see the padding, so no attention mask is needed and each
  group reuses the layer arguments (rotary embeddings, masks) of one of its sequences.

The names load on first use (``lmcompose.editing.X``): the settings (``LocateEditConfig``)
import without torch, so a study using an editor is validated without loading it.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    **dict.fromkeys(
        [
            "EditHParams",
            "LLAMA_LIKE",
            "VSTAR_HPARAMS",
            "LocateEditConfig",
            "Preset",
            "check_edit_selection",
            "VStarSettings",
            "check_layers_exist",
            "rule_layers",
            "select_edits",
        ],
        "config",
    ),
    **dict.fromkeys(
        [
            "PrefixKV",
            "SplitGroup",
            "Tail",
            "compute_context",
            "module_io",
            "module_values_at",
            "residual_after",
            "residual_entering",
            "split_forward",
        ],
        "forward",
    ),
    **dict.fromkeys(["LocateThenEdit"], "editor"),
    **dict.fromkeys(
        [
            "bare_rows",
            "edit_keys",
            "iter_batches",
            "match_preset",
            "model_shape",
            "spread_residual",
            "template_key_mean",
            "through_post_norm",
        ],
        "locate",
    ),
    **dict.fromkeys(
        [
            "Row",
            "key_rows",
            "length_groups",
            "pad_id",
            "pad_right",
            "prefix_groups",
            "rewrite_rows",
            "subject_last_index",
            "target_ids",
        ],
        "rows",
    ),
    **dict.fromkeys(["STARTERS", "VStarResult", "context_templates", "kl_term", "optimize_vstar", "row_adam"], "vstar"),
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'lmcompose.editing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lmcompose.editing._{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
