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
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names as the type checker sees them (they load on first use)
    from lmcompose.editing._config import LLAMA_LIKE as LLAMA_LIKE
    from lmcompose.editing._config import VSTAR_HPARAMS as VSTAR_HPARAMS
    from lmcompose.editing._config import EditHParams as EditHParams
    from lmcompose.editing._config import LocateEditConfig as LocateEditConfig
    from lmcompose.editing._config import Preset as Preset
    from lmcompose.editing._config import VStarSettings as VStarSettings
    from lmcompose.editing._config import check_edit_selection as check_edit_selection
    from lmcompose.editing._config import check_layers_exist as check_layers_exist
    from lmcompose.editing._config import rule_layers as rule_layers
    from lmcompose.editing._config import select_edits as select_edits
    from lmcompose.editing._editor import LocateThenEdit as LocateThenEdit
    from lmcompose.editing._forward import PrefixKV as PrefixKV
    from lmcompose.editing._forward import SplitGroup as SplitGroup
    from lmcompose.editing._forward import Tail as Tail
    from lmcompose.editing._forward import compute_context as compute_context
    from lmcompose.editing._forward import module_io as module_io
    from lmcompose.editing._forward import module_values_at as module_values_at
    from lmcompose.editing._forward import residual_after as residual_after
    from lmcompose.editing._forward import residual_entering as residual_entering
    from lmcompose.editing._forward import split_forward as split_forward
    from lmcompose.editing._locate import bare_rows as bare_rows
    from lmcompose.editing._locate import edit_keys as edit_keys
    from lmcompose.editing._locate import iter_batches as iter_batches
    from lmcompose.editing._locate import match_preset as match_preset
    from lmcompose.editing._locate import model_shape as model_shape
    from lmcompose.editing._locate import spread_residual as spread_residual
    from lmcompose.editing._locate import template_key_mean as template_key_mean
    from lmcompose.editing._locate import through_post_norm as through_post_norm
    from lmcompose.editing._rows import Row as Row
    from lmcompose.editing._rows import key_rows as key_rows
    from lmcompose.editing._rows import length_groups as length_groups
    from lmcompose.editing._rows import pad_id as pad_id
    from lmcompose.editing._rows import pad_right as pad_right
    from lmcompose.editing._rows import prefix_groups as prefix_groups
    from lmcompose.editing._rows import rewrite_rows as rewrite_rows
    from lmcompose.editing._rows import subject_last_index as subject_last_index
    from lmcompose.editing._rows import target_ids as target_ids
    from lmcompose.editing._vstar import STARTERS as STARTERS
    from lmcompose.editing._vstar import VStarResult as VStarResult
    from lmcompose.editing._vstar import context_templates as context_templates
    from lmcompose.editing._vstar import kl_term as kl_term
    from lmcompose.editing._vstar import optimize_vstar as optimize_vstar
    from lmcompose.editing._vstar import row_adam as row_adam

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


def __getattr__(name: str) -> object:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'lmcompose.editing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lmcompose.editing._{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
