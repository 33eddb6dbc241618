"""Architecture specs: where a model family keeps the parts interventions touch.

Paths are attribute paths: ``layers`` from the model root, the projection names from one
decoder layer. gpt2 stores its projections as ``Conv1D`` with weight shape (in, out);
:func:`weight_matrix` always returns the (out, in) matrix (a view, so in-place edits land
in the model).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Module, ModuleList

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "decoder_layers",
    "find_spec_for",
    "get_path",
    "is_conv1d",
    "linear_modules",
    "weight_matrix",
]


@dataclass(frozen=True)
class ArchSpec:
    """Where the decoder layers, attention, MLP, final norm, embeddings and LM head live."""

    name: str
    model_types: tuple[str, ...]
    layers: str
    attn_in: tuple[str, ...]
    attn_out: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    final_norm: str
    embed: str
    lm_head: str
    attn_norm: str | None = None
    mlp_norm: str | None = None
    conv1d: bool = False
    # For scale folding (AWQ): the value projection when it is its own matrix whose outputs
    # feed attn_out linearly; the MLP input projection that multiplies (gated MLP) into
    # mlp_out's input; and c where a norm computes x̂ · (c + weight) (gemma: 1).
    attn_v: str | None = None
    mlp_up: str | None = None
    norm_offset: float = 0.0
    # A norm between mlp_out and the residual stream (gemma: post_feedforward_layernorm);
    # MEMIT inverts it to turn a residual-stream target into an mlp_out target.
    mlp_post_norm: str | None = None

    @property
    def summary(self) -> str:
        return f"{self.name}: {', '.join(self.model_types)}"

    def linear_names(self) -> tuple[str, ...]:
        """The projections of one decoder layer, in forward order."""
        return (*self.attn_in, self.attn_out, *self.mlp_in, self.mlp_out)


ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        layers="model.layers",
        attn_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        attn_out="self_attn.o_proj",
        mlp_in=("mlp.gate_proj", "mlp.up_proj"),
        mlp_out="mlp.down_proj",
        final_norm="model.norm",
        embed="model.embed_tokens",
        lm_head="lm_head",
        attn_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",
        attn_v="self_attn.v_proj",
        mlp_up="mlp.up_proj",
    ),
    ArchSpec(
        name="gemma3",
        model_types=("gemma3_text",),
        layers="model.layers",
        attn_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        attn_out="self_attn.o_proj",
        mlp_in=("mlp.gate_proj", "mlp.up_proj"),
        mlp_out="mlp.down_proj",
        final_norm="model.norm",
        embed="model.embed_tokens",
        lm_head="lm_head",
        attn_norm="input_layernorm",
        mlp_norm="pre_feedforward_layernorm",
        attn_v="self_attn.v_proj",
        mlp_up="mlp.up_proj",
        norm_offset=1.0,
        mlp_post_norm="post_feedforward_layernorm",
    ),
    ArchSpec(
        name="gpt_neox",
        model_types=("gpt_neox",),
        layers="gpt_neox.layers",
        attn_in=("attention.query_key_value",),
        attn_out="attention.dense",
        mlp_in=("mlp.dense_h_to_4h",),
        mlp_out="mlp.dense_4h_to_h",
        final_norm="gpt_neox.final_layer_norm",
        embed="gpt_neox.embed_in",
        lm_head="lm_head",  # "embed_out" before transformers 4.5x
        attn_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",
    ),
    ArchSpec(
        name="gpt2",
        model_types=("gpt2",),
        layers="transformer.h",
        attn_in=("attn.c_attn",),
        attn_out="attn.c_proj",
        mlp_in=("mlp.c_fc",),
        mlp_out="mlp.c_proj",
        final_norm="transformer.ln_f",
        embed="transformer.wte",
        lm_head="lm_head",
        attn_norm="ln_1",
        mlp_norm="ln_2",
        conv1d=True,
    ),
    ArchSpec(
        name="gptj",
        model_types=("gptj",),
        layers="transformer.h",
        attn_in=("attn.q_proj", "attn.k_proj", "attn.v_proj"),
        attn_out="attn.out_proj",
        mlp_in=("mlp.fc_in",),
        mlp_out="mlp.fc_out",
        final_norm="transformer.ln_f",
        embed="transformer.wte",
        lm_head="lm_head",
        attn_norm="ln_1",
        mlp_norm=None,  # GPT-J runs attention and MLP in parallel off the same ln_1
        attn_v="attn.v_proj",
    ),
    ArchSpec(
        name="opt",
        model_types=("opt",),
        layers="model.decoder.layers",
        attn_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        attn_out="self_attn.out_proj",
        mlp_in=("fc1",),
        mlp_out="fc2",
        final_norm="model.decoder.final_layer_norm",
        embed="model.decoder.embed_tokens",
        lm_head="lm_head",
        attn_norm="self_attn_layer_norm",
        mlp_norm="final_layer_norm",  # before attention/MLP only with config.do_layer_norm_before
        attn_v="self_attn.v_proj",
    ),
)


def get_path(root: Module, path: str) -> Module:
    """The submodule at a dotted attribute path (a digit indexes a ModuleList)."""
    obj = root
    for part in path.split("."):
        obj = cast("ModuleList", obj)[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def decoder_layers(model: Module, spec: ArchSpec) -> ModuleList:
    return cast("ModuleList", get_path(model, spec.layers))


def linear_modules(model: Module, spec: ArchSpec) -> list[tuple[str, Module]]:
    """(qualified name, module) of every projection in every decoder layer, in order."""
    out = []
    for i, _layer in enumerate(decoder_layers(model, spec)):
        for rel in spec.linear_names():
            name = f"{spec.layers}.{i}.{rel}"
            out.append((name, get_path(model, name)))
    return out


def is_conv1d(module: object) -> bool:
    return type(module).__name__ == "Conv1D"


def weight_matrix(module: Module) -> Tensor:
    """The (out_features, in_features) weight of a Linear or a (transposed) Conv1D, as a view."""
    w = cast("Tensor", module.weight).data
    return w.t() if is_conv1d(module) else w


def find_spec_for(model_type: str, specs: Iterable[ArchSpec]) -> ArchSpec | None:
    for spec in specs:
        if model_type in spec.model_types:
            return spec
    return None
