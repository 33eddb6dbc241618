"""An in-repo test plugin implementing every hook once."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmcompose import EditDataset, EditRecord, Intervention, Metric, StrengthKnob, hookimpl
from lmcompose.models.arch import ArchSpec


@dataclass
class ScaleConfig:
    factor: float = field(default=0.5, metadata={"help": "multiply every decoder projection by this"})


class ScaleWeights(Intervention):
    """Multiply decoder projection weights by a factor (test plugin)."""

    name = "scale_weights"
    kind = "test"
    Config = ScaleConfig
    strength = StrengthKnob("factor", 0.0, 2.0)

    def apply(self, lm, ctx):
        import torch

        with torch.no_grad():
            for name, _ in lm.linear_layers():
                lm.weight(name).mul_(self.config.factor)
        return self.report(factor=self.config.factor)


class WeightNorm(Metric):
    """Sum of squared decoder projection weights (test plugin)."""

    name = "weight_norm"
    keys = ("weight_norm",)
    higher_is_better = {"weight_norm": None}

    def compute(self, lm, ctx):
        return {"weight_norm": float(sum(float((lm.weight(n) ** 2).sum()) for n, _ in lm.linear_layers()))}


class FixedEdits(EditDataset):
    """Two fixed edit requests (test plugin)."""

    name = "fixed_edits"

    def load(self, source=None, limit=None, seed=0):
        recs = [
            EditRecord("a", "Berlin", "Berlin is the capital of", "Italy", "Germany"),
            EditRecord("b", "Toyota", "Toyota is a company from", "Germany", "Japan"),
        ]
        return recs[:limit] if limit else recs


ALIAS_SPEC = ArchSpec(
    name="llama_alias",
    model_types=("llama_alias_for_tests",),
    layers="model.layers",
    attn_in=("self_attn.q_proj",),
    attn_out="self_attn.o_proj",
    mlp_in=("mlp.up_proj",),
    mlp_out="mlp.down_proj",
    final_norm="model.norm",
    embed="model.embed_tokens",
    lm_head="lm_head",
)


@hookimpl
def register_interventions(register):
    register(ScaleWeights)


@hookimpl
def register_metrics(register):
    register(WeightNorm)


@hookimpl
def register_datasets(register):
    register(FixedEdits, kind="edits")


@hookimpl
def register_architectures(register):
    register(ALIAS_SPEC)


@hookimpl
def register_commands(app):
    @app.command(name="hello-test")
    def hello_test() -> None:
        """Say hello (test plugin command)."""
        print("hello from the test plugin")
