"""The core's layer-sequential calibration pipeline and its Gram accumulator.

The statistics pass ends at the last watched projection's input, and the Gram computes
only the upper block triangle of XXᵀ: both are speed-ups, so both must leave what a method
sees exactly as a plain forward pass would give it.
"""

from __future__ import annotations

import pytest
import torch
from lmcompose.api import Context
from lmcompose.calibration import Gram, run_layer_sequential
from lmcompose.models.arch import decoder_layers
from lmcompose.models.tiny import tiny_model
from lmcompose.testing import capture_inputs

ARCHS = ["llama", "gemma3", "gpt_neox", "gpt2"]


@pytest.mark.parametrize("d,stripe", [(7, 256), (64, 16), (300, 64), (577, 128), (200, 1000)])
def test_gram_equals_the_float64_product_and_is_symmetric(d, stripe):
    gen = torch.Generator().manual_seed(d)
    xs = [torch.randn(n, d, generator=gen) * torch.linspace(0.1, 3, d) for n in (50, 1, 129)]
    gram = Gram(d, "cpu", stripe=stripe)
    for x in xs:
        gram.add(x)
    x = torch.cat(xs).double()
    expect = x.t() @ x
    got = gram.xxt
    assert got.dtype == torch.float64 and got.shape == (d, d)
    assert torch.equal(got, got.t())
    # float64 accumulation of float32 inputs: the float64 product up to its own rounding
    assert torch.allclose(got, expect, rtol=1e-12, atol=1e-12 * float(expect.diag().max()))
    assert gram.tokens == 180
    assert len(gram.stripes) == -(-d // stripe)
    assert torch.allclose(gram.second_moment(), expect / 180, rtol=1e-12, atol=1e-12)


def test_gram_does_not_depend_on_how_the_tokens_are_batched():
    """The order tokens are summed in (batching, BLAS blocking, threads) moves Σ xxᵀ only in
    float64's last digits, far below float32's 6e-8 that the solvers would amplify."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 96, generator=gen) * torch.linspace(0.01, 30, 96)
    whole, pieces = Gram(96, "cpu", stripe=32), Gram(96, "cpu", stripe=32)
    whole.add(x)
    for part in x.split(100):
        pieces.add(part)
    rel = float((whole.xxt - pieces.xxt).abs().max() / whole.xxt.abs().max())
    assert rel < 1e-13
    # the same sums in float32 differ at float32's scale
    f32 = x.t() @ x
    f32_pieces = sum(p.t() @ p for p in x.split(100))
    assert float((f32 - f32_pieces).abs().max() / f32.abs().max()) > 1e-9


def test_gram_xxt_is_a_fresh_tensor():
    gram = Gram(40, "cpu", stripe=16)
    gram.add(torch.ones(3, 40))
    gram.xxt.mul_(0)  # a method damping its copy must not touch the accumulator
    assert float(gram.xxt[0, 0]) == 3.0


def _watch(lm, i, suffixes):
    prefix = f"{lm.arch.layers}.{i}."
    return [n for n, _ in lm.linear_layers() if n.startswith(prefix) and n.rsplit(".", 1)[-1] in suffixes]


def _last_projection(lm, i):
    return [n for n, _ in lm.linear_layers() if n.startswith(f"{lm.arch.layers}.{i}.")][-1]


@pytest.mark.parametrize("arch", ARCHS)
def test_pipeline_observes_what_a_forward_pass_feeds_each_projection(arch):
    lm = tiny_model(arch)
    windows = Context().calibration_batches(lm, 4, 32)
    names = [n for n, _ in lm.linear_layers() if n.startswith(lm.arch.layers + ".")]
    expect = {n: capture_inputs(lm, n, windows) for n in names}
    seen: dict[str, list[torch.Tensor]] = {}
    modified: list[int] = []
    layer_of = {n: int(n[len(lm.arch.layers) + 1 :].split(".", 1)[0]) for n in names}
    run_layer_sequential(
        lm,
        windows,
        lambda i: [n for n in names if layer_of[n] == i],
        lambda _i, n, x: seen.setdefault(n, []).append(x.clone()),
        lambda i, _names: modified.append(i),
    )
    assert modified == list(range(len(decoder_layers(lm.model, lm.arch))))
    for n in names:  # nothing modified, so every projection sees the model's own inputs
        assert torch.allclose(torch.cat(seen[n]), expect[n], atol=1e-5), n


def _layer_names(lm):
    names = [n for n, _ in lm.linear_layers() if n.startswith(lm.arch.layers + ".")]
    layer_of = {n: int(n[len(lm.arch.layers) + 1 :].split(".", 1)[0]) for n in names}
    return names, lambda i: [n for n in names if layer_of[n] == i]


def test_true_sequential_stages_see_the_groups_before_them_changed():
    from lmcompose.calibration import true_sequential_stages

    lm = tiny_model("llama")
    windows = Context().calibration_batches(lm, 2, 16)
    _names, names_of = _layer_names(lm)
    stages = true_sequential_stages(lm)
    assert [[n.rsplit(".", 1)[-1] for n in g] for g in stages(0, names_of(0))] == [
        ["q_proj", "k_proj", "v_proj"],
        ["o_proj"],
        ["gate_proj", "up_proj"],
        ["down_proj"],
    ]
    o_proj = f"{lm.arch.layers}.0.self_attn.o_proj"
    for staged in (False, True):
        lm = tiny_model("llama")
        seen, calls = {}, []

        def modify(i, names, lm=lm, calls=calls):
            calls.append([n.rsplit(".", 1)[-1] for n in names])
            for n in names:
                if n.endswith("v_proj"):
                    lm.weight(n).data.zero_()  # o_proj's input is attention over v: all zeros after this

        run_layer_sequential(
            lm,
            windows,
            names_of,
            lambda _i, n, x, seen=seen: seen.setdefault(n, []).append(x.clone()),
            modify,
            stages=stages if staged else None,
        )
        zero = bool(torch.cat(seen[o_proj]).abs().max() == 0)
        assert zero == staged  # one pass sees o_proj's inputs before v_proj changed
        assert len(calls) == len(decoder_layers(lm.model, lm.arch)) * (4 if staged else 1)


def test_next_layer_calibrated_on_full_precision_outputs():
    lm = tiny_model("llama")
    windows = Context().calibration_batches(lm, 2, 16)
    names, names_of = _layer_names(lm)
    expect = {n: capture_inputs(lm, n, windows) for n in names}
    for next_inputs in ("modified", "original"):
        lm = tiny_model("llama")
        seen = {}

        def modify(i, names, lm=lm):
            for n in names:
                lm.weight(n).data.mul_(0.5)

        run_layer_sequential(
            lm,
            windows,
            names_of,
            lambda _i, n, x, seen=seen: seen.setdefault(n, []).append(x.clone()),
            modify,
            next_inputs=next_inputs,
        )
        later = [n for n in names if not n.startswith(f"{lm.arch.layers}.0.")]
        same = all(torch.allclose(torch.cat(seen[n]), expect[n], atol=1e-5) for n in later)
        assert same == (next_inputs == "original")  # every layer sees the unmodified model's inputs


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("watched", ["all", "attention"])
def test_statistics_pass_stops_after_the_last_watched_projection(arch, watched):
    """Window 0 runs each layer whole (to count the watched calls); every later window's
    statistics pass stops there, so the layer's last projection runs once in the statistics
    pass and once per window in the recompute pass."""
    lm = tiny_model(arch)
    n = 5
    windows = Context().calibration_batches(lm, n, 16)
    layers = decoder_layers(lm.model, lm.arch)
    attention = {"q_proj", "k_proj", "v_proj", "query_key_value", "c_attn"}
    suffixes = {name.rsplit(".", 1)[-1] for name, _ in lm.linear_layers()} if watched == "all" else attention
    last = [_last_projection(lm, i) for i in range(len(layers))]
    runs = dict.fromkeys(last, 0)
    handles = [
        lm.model.get_submodule(name).register_forward_hook(
            lambda *_a, name=name: runs.__setitem__(name, runs[name] + 1)
        )
        for name in last
    ]
    tokens: dict[str, int] = {}

    def observe(_i, name, x):
        tokens[name] = tokens.get(name, 0) + x.shape[0]

    try:
        run_layer_sequential(lm, windows, lambda i: _watch(lm, i, suffixes), observe, lambda i, names: None)
    finally:
        for h in handles:
            h.remove()
    assert tokens and all(t == n * 16 for t in tokens.values())  # every window observed
    assert runs == dict.fromkeys(last, 2 + n)  # not 1 + 2n


def test_the_damped_inverse_factor_is_the_same_for_every_thread_count(monkeypatch):
    """LAPACK's blocked factorizations sum in an order that depends on the thread count; the
    solvers' factor is computed on one thread, so it is bit-identical however many torch uses."""
    from lmcompose.calibration import inverse_cholesky_upper

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(700, 300, generator=gen, dtype=torch.float64) * torch.logspace(-3, 1, 300, dtype=torch.float64)
    h = x.t() @ x
    seen: list[int] = []
    real = torch.linalg.cholesky_ex

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", spy)
    before = torch.get_num_threads()
    factors = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            upper, _, _ = inverse_cholesky_upper(h, 0.01)
            assert torch.get_num_threads() == threads  # restored
        finally:
            torch.set_num_threads(before)
        factors.append(upper)
    assert seen and set(seen) == {1}
    assert upper.dtype == torch.float64 and torch.equal(factors[0], factors[1])
