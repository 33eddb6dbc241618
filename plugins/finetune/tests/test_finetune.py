from __future__ import annotations

import pytest
import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, parse_step
from lmcompose.errors import ConfigError
from lmcompose.models.tiny import TINY_ARCHITECTURES, tiny_model
from lmcompose.testing import InterventionConformance, argmax_hits, subject_final_edits
from lmcompose_finetune.config import LoRAConfig
from lmcompose_finetune.intervention import attach_lora, lora_targets, merge_lora
from lmcompose_finetune.training import train_on_edits

# random tiny models have logits of tiny scale: a large learning rate makes the targets the argmax
FT = "ft:layers=0+1,lr=0.01,norm_constraint=0"
LORA = "lora:lr=0.01,layers=0+1"


class TestFTConformance(InterventionConformance):
    intervention = "ft"
    config = {"lr": 0.01, "steps": 3}


class TestLoRAConformance(InterventionConformance):
    intervention = "lora"
    config = {"lr": 0.01, "steps": 3, "rank": 2}


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("spec", [FT, LORA])
def test_edits_become_the_argmax_on_every_architecture(arch, spec, tmp_path):
    lm = tiny_model(arch)
    records = subject_final_edits()
    assert not all(argmax_hits(lm, records))
    report = build_intervention(parse_step(spec)).apply(lm, Context(edits=records, cache_dir=tmp_path))
    assert all(argmax_hits(lm, records)), report.details
    assert report.details["loss_final"] < report.details["loss_first"]
    assert all(v > 0 for v in report.details["update_norms"].values())


def test_lora_merge_gives_the_logits_of_the_unmerged_adapter():
    lm = tiny_model("llama")
    records = subject_final_edits()
    config = LoRAConfig(lr=0.01, rank=4)
    names = lora_targets(lm, ["mlp.down_proj", "mlp.up_proj"], [0, 1])
    peft_model = attach_lora(lm, config, names)
    train_on_edits(
        lm, records, [p for n, p in peft_model.named_parameters() if "lora_" in n], 10, 0.01, 0.0, 1e-9, 4096
    )
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapter = lm.model(ids).logits
    merge_lora(lm, peft_model)
    assert not any("lora" in n for n, _ in lm.model.named_modules())
    assert [type(lm.model.get_submodule(n)).__name__ for n in names] == ["Linear"] * len(names)
    with torch.no_grad():
        merged = lm.model(ids).logits
    base = tiny_model("llama")
    with torch.no_grad():
        untouched = base.model(ids).logits
    assert not torch.allclose(adapter, untouched, atol=1e-4)  # the adapter did something
    assert torch.allclose(merged, adapter, atol=1e-5, rtol=1e-5)


def test_ft_keeps_every_weight_within_the_norm_constraint(tmp_path):
    lm = tiny_model("llama")
    name = f"{lm.arch.layers}.0.{lm.arch.mlp_out}"
    before = lm.weight(name).detach().clone()
    step = build_intervention(parse_step("ft:layers=0,lr=0.01,norm_constraint=0.002"))
    step.apply(lm, Context(edits=subject_final_edits(), cache_dir=tmp_path))
    change = (lm.weight(name).detach() - before).abs().max()
    assert 0.0019 < float(change) <= 0.002 + 1e-7


@pytest.mark.parametrize("spec", [FT, LORA + ",target_modules=mlp.down_proj"])
def test_sequential_batches_compose(spec, tmp_path):
    """Batch 2 does not undo batch 1: after two batches every edit is the argmax. (With an
    adapter on every MLP projection of this random model, batch 2 does overwrite two of
    batch 1's edits: fine-tuning forgets what it is not shown again; docs/finetune.md.)"""
    lm = tiny_model("llama")
    records = subject_final_edits()
    report = build_intervention(parse_step(spec + ",batches=2")).apply(lm, Context(edits=records, cache_dir=tmp_path))
    assert report.details["batches"] == 2 and len(report.details["steps"]) == 2
    assert all(argmax_hits(lm, records)), report.details


def test_bad_inputs_are_one_message_each(tmp_path):
    lm = tiny_model("llama")
    ctx = Context(edits=subject_final_edits(), cache_dir=tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"target_modules: 'mlp.nope' matches no projection in layers \[0, 1\]; this model's projections are "
        r".*mlp.down_proj",
    ):
        build_intervention(parse_step("lora:target_modules=mlp.nope,layers=0+1")).apply(lm, ctx)
    assert not any("lora" in n for n, _ in lm.model.named_modules())  # nothing attached
    for bad in ("0", "-2"):
        with pytest.raises(ConfigError, match=rf"field 'rank': {bad} is out of range; use a value in \[1, "):
            build_intervention(parse_step(f"lora:rank={bad}"))
    with pytest.raises(ConfigError, match="rank=0: the LoRA rank must be at least 1"):
        LoRAConfig(rank=0)
    with pytest.raises(ConfigError, match="modules: 'mlp.nope' is not a projection of layer 0"):
        build_intervention(parse_step("ft:layers=0,modules=mlp.nope")).apply(lm, ctx)
    with pytest.raises(ConfigError, match="layers \\[7\\] do not exist"):
        build_intervention(parse_step("lora:layers=7")).apply(lm, ctx)
    with pytest.raises(ConfigError, match="batches=5 but only 4 edits"):
        build_intervention(parse_step("ft:batches=5")).apply(lm, ctx)
