"""On a CUDA GPU (skipped without one; benchmarks/gpu/check.sh runs them on a lent machine):
every method on every tiny architecture on the GPU gives about the CPU's numbers, a saved GPU
model reloads on the CPU, and a model offloaded from a small GPU budget gives the in-memory
GPU numbers."""

from __future__ import annotations

import pytest
import torch
from lmcompose.api import Context
from lmcompose.compose import build_intervention, build_metrics, load_edits, parse_step
from lmcompose.models.tiny import TINY_ARCHITECTURES, tiny_model

pytestmark = [pytest.mark.device, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

STEPS = [
    "magnitude:sparsity=0.5",
    "rtn:bits=4,group_size=32",
    "sparsegpt:n_samples=4,seqlen=32",
    "wanda:n_samples=4,seqlen=32",
    "gptq:bits=4,group_size=32,n_samples=4,seqlen=32",
    "awq:bits=4,group_size=32,n_samples=4,seqlen=32,n_grid=4",
    "memit:layers=0+1,context_templates=0,stats_samples=8,stats_seqlen=64,v_num_grad_steps=5",
]
METRICS = {"perplexity": {"seqlen": 64, "max_tokens": 512}}


def numbers(lm, ctx):
    ms = build_metrics(["perplexity", "avg_bits", "edit"], METRICS)
    return {k: v for m in ms for k, v in m.compute(lm, ctx).items() if isinstance(v, float)}


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("step", STEPS)
def test_gpu_gives_the_cpu_numbers(arch, step):
    edits = load_edits("records", None, limit=2, seed=0)
    got = []
    for device in ("cpu", "cuda"):
        lm = tiny_model(arch)
        lm.model.to(device)
        ctx = Context(edits=list(edits), device=device, calibration_samples=4, calibration_seqlen=32)
        build_intervention(parse_step(step)).apply(lm, ctx)
        got.append(numbers(lm, ctx))
    cpu, gpu = got
    assert gpu["avg_bits"] == pytest.approx(cpu["avg_bits"], rel=1e-3)
    assert gpu["perplexity"] == pytest.approx(cpu["perplexity"], rel=0.02)


def test_a_gpu_model_saved_reloads_on_the_cpu(tmp_path):
    from lmcompose.engine.saving import write_model_folder
    from lmcompose.models.loading import load_model

    lm = tiny_model("llama")
    lm.model.to("cuda")
    build_intervention(parse_step("rtn:bits=4,group_size=32")).apply(lm, Context(device="cuda"))
    ppl = numbers(lm, Context())["perplexity"]
    write_model_folder(lm, tmp_path / "m", {})
    again = load_model(str(tmp_path / "m"))
    assert numbers(again, Context())["perplexity"] == pytest.approx(ppl, rel=1e-3)


@pytest.mark.parametrize("step", ["sparsegpt:n_samples=4,seqlen=32", STEPS[-1]])
def test_offloaded_from_the_gpu_matches_in_memory(tmp_path, step):
    from lmcompose.models.loading import load_model

    tiny_model("llama").save(tmp_path / "base")
    edits = load_edits("records", None, limit=2, seed=0)
    got = []
    for placement in ({"device": "cuda"}, {"device_map": "auto", "max_memory": "0=150KB,cpu=100KB"}):
        lm = load_model(str(tmp_path / "base"), **placement)
        ctx = Context(edits=list(edits), device="cuda", calibration_samples=4, calibration_seqlen=32)
        build_intervention(parse_step(step)).apply(lm, ctx)
        got.append((lm.offloaded, numbers(lm, ctx)))
    assert got[1][0] and not got[0][0]
    assert got[1][1]["perplexity"] == pytest.approx(got[0][1]["perplexity"], rel=1e-4)
