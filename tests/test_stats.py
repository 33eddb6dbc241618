from __future__ import annotations

import pytest
import torch
from lmcompose.models.tiny import TINY_ARCHITECTURES, tiny_model
from lmcompose.stats import input_fingerprint, producing_parameters, second_moments


def windows(n=4, seqlen=16):
    return torch.randint(0, 500, (n, seqlen), generator=torch.Generator().manual_seed(0))


def down(lm, i):
    return f"{lm.arch.layers}.{i}.{lm.arch.mlp_out}"


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_second_moment_is_the_mean_outer_product_of_the_inputs(arch):
    lm = tiny_model(arch)
    w = windows()
    name = down(lm, 1)
    seen = []
    h = lm.model.get_submodule(name).register_forward_pre_hook(
        lambda _m, a: seen.append(a[0].reshape(-1, a[0].shape[-1]))
    )
    with torch.no_grad():
        lm.model(w)
    h.remove()
    x = torch.cat(seen).double()
    got = second_moments(lm, [name], w)[name]
    assert got["tokens"] == w.numel()
    assert torch.allclose(got["mom2"], x.T @ x / x.shape[0], atol=1e-6)


def test_producing_parameters_stop_before_the_module():
    lm = tiny_model("llama")
    names = {n for n, _ in producing_parameters(lm, down(lm, 1))}
    assert "model.embed_tokens.weight" in names
    assert "model.layers.0.mlp.down_proj.weight" in names
    assert "model.layers.1.mlp.up_proj.weight" in names
    assert "model.layers.1.mlp.down_proj.weight" not in names
    assert not any(n.startswith("model.norm") or n.startswith("lm_head") for n in names)


def test_cache_hit_miss_and_invalidation(tmp_path):
    lm = tiny_model("llama")
    w = windows()
    names = [down(lm, 0), down(lm, 1)]
    first = second_moments(lm, names, w, tmp_path)
    assert not any(r["cached"] for r in first.values())
    again = second_moments(lm, names, w, tmp_path)
    assert all(r["cached"] for r in again.values())
    for n in names:
        assert torch.equal(first[n]["mom2"], again[n]["mom2"])  # float64 round trip, bit for bit

    # other windows: a miss
    assert not any(r["cached"] for r in second_moments(lm, names, windows(seqlen=12), tmp_path).values())

    # editing layer 1's output projection changes neither layer's inputs: both still hit
    with torch.no_grad():
        lm.weight(down(lm, 1)).add_(0.1)
    assert all(r["cached"] for r in second_moments(lm, names, w, tmp_path).values())

    # editing layer 0's output projection changes layer 1's inputs only
    fp0 = input_fingerprint(lm, names[0])
    with torch.no_grad():
        lm.weight(down(lm, 0)).add_(0.1)
    assert input_fingerprint(lm, names[0]) == fp0
    after = second_moments(lm, names, w, tmp_path)
    assert after[names[0]]["cached"] and not after[names[1]]["cached"]
    assert not torch.allclose(after[names[1]]["mom2"], first[names[1]]["mom2"])
