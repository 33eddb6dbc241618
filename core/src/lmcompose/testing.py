"""The conformance suite every intervention plugin runs, shipped as a pytest plugin.

Use it from a plugin's tests::

    from lmcompose.testing import InterventionConformance

    class TestMyPrune(InterventionConformance):
        intervention = "myprune"          # registered name
        config = {"sparsity": 0.5}        # a typical setting (field -> value)

Every test runs on a tiny random model of each architecture in ``architectures``: the
step applies and changes the model, is deterministic under a seed, accepts its strength
range and rejects values outside it, leaves the model saveable and loadable (with its
compression state), and its ``project()`` is idempotent and restores the constraint after
the weights are disturbed.

The module is registered under the ``pytest11`` entry point, so its fixtures
(``tiny_lm``, ``tiny_folder``, ``tiny_edits``, ``shared_data``, ``offline_without_data``) are available in
any test once lmcompose is installed. It imports torch only inside tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest

from lmcompose.api import Context, EditRecord, Intervention, StepReport
from lmcompose.api._values import to_float
from lmcompose.errors import ConfigError
from lmcompose.models.tiny import TINY_ARCHITECTURES

if TYPE_CHECKING:
    import torch

    from lmcompose.models.handle import LM

    #: what a forward hook hands ``_record``'s ``take``: the module's positional inputs and its output
    Take = Callable[[tuple[torch.Tensor, ...], torch.Tensor | tuple[torch.Tensor, ...]], torch.Tensor]


def _state(lm: LM) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def tiny_lm(request: pytest.FixtureRequest) -> LM:
    """A tiny random llama LM (``@pytest.mark.parametrize('tiny_lm', ['gpt2'], indirect=True)``
    picks another architecture)."""
    from lmcompose.models.tiny import tiny_model

    return tiny_model(getattr(request, "param", "llama"), seed=0)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random llama saved as a model folder (its path), once per test module: what a
    study or a CLI command loads by path."""
    from lmcompose.models.tiny import tiny_model

    path = tmp_path_factory.mktemp("tiny") / "llama"
    tiny_model("llama").save(path)
    return str(path)


def sample_file(plugin: str, name: str) -> str:
    """The path of a file a dataset plugin bundles (``sample_file("counterfact",
    "counterfact_sample.json")``)."""
    from importlib import resources

    return str(resources.files(f"lmcompose_{plugin}").joinpath("sample").joinpath(name))


@pytest.fixture
def tiny_edits() -> list[EditRecord]:
    """Four edit requests from the bundled sample."""
    from lmcompose.compose import load_edits

    return load_edits("records", limit=4, seed=0)


def subject_final_edits() -> list[EditRecord]:
    """Edits whose prompt ends with the subject and whose target is one token of the tiny
    tokenizer: on a random model the residual at the subject's last token then decides the
    first target token directly, so an editor can make it the argmax (attention cannot carry it)."""
    pairs = [("The river town", "city"), ("Danny Glover", "country"), ("the Eiffel Tower", "water"), ("Berlin", "work")]
    return [
        EditRecord(case_id=str(i), subject=s, prompt=f"What everyone says about {s}", target_new=t)
        for i, (s, t) in enumerate(pairs)
    ]


def argmax_hits(lm: LM, records: list[EditRecord]) -> list[bool]:
    """Per edit: whether every target token is the greedy next token after the prompt."""
    import torch

    from lmcompose.metrics.edits import Scorer

    sc = Scorer(lm, 16)
    hits = []
    for r in records:
        p, t = sc.encode(r.prompt, r.target_new)
        with torch.no_grad():
            logits = lm.model(torch.tensor([p + t])).logits[0]
        hits.append(logits[len(p) - 1 : len(p) + len(t) - 1].argmax(-1).tolist() == t)
    return hits


def capture_inputs(lm: LM, name: str, windows: torch.Tensor) -> torch.Tensor:
    """The inputs (tokens, in_features) that projection ``name`` sees when ``lm`` runs on
    ``windows`` one by one: for a layer-0 projection, exactly what a layer-sequential
    method calibrates on."""
    return _record(lm, lm.model.get_submodule(name), windows, lambda args, _out: args[0].reshape(-1, args[0].shape[-1]))


def _record(lm: LM, module: torch.nn.Module, windows: Iterable[torch.Tensor], take: Take) -> torch.Tensor:
    """Run ``lm`` on ``windows`` one by one and concatenate ``take(args, out)`` of every call of ``module``."""
    import torch

    seen = []
    handle = module.register_forward_hook(lambda _m, args, out: seen.append(take(args, out)))
    try:
        with torch.no_grad():
            for row in windows:
                lm.model(row[None])
    finally:
        handle.remove()
    return torch.cat(seen)


def layer_outputs(lm: LM, windows: torch.Tensor, index: int = 0) -> torch.Tensor:
    """The outputs of decoder layer ``index`` when ``lm`` runs on ``windows`` one by one,
    concatenated along the sequence; for layer 0 the inputs (the embeddings) do not depend on
    any compressor, so two models' outputs compare a layer's error on the same inputs."""
    from lmcompose.models.arch import decoder_layers

    layer = decoder_layers(lm.model, lm.arch)[index]
    return _record(lm, layer, windows, lambda _args, out: out[0] if isinstance(out, tuple) else out)


def with_outlier_features(lm: LM, seed: int = 0, spread: float = 1.5) -> LM:
    """Give ``lm``'s layer-0 norms seeded log-normal gains exp(N(0, spread²)), so a few input
    features of its projections have much larger norms, as in real LLMs (what Wanda and AWQ
    exploit); a random tiny model has none. Returns ``lm``."""
    import torch

    layer0 = lm.model.get_submodule(f"{lm.arch.layers}.0")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm_name in (lm.arch.attn_norm, lm.arch.mlp_norm):
            if norm_name is None:  # an architecture without this norm
                continue
            weight = layer0.get_submodule(norm_name).weight
            assert isinstance(weight, torch.Tensor)
            gains = torch.exp(torch.randn(weight.shape, generator=gen) * spread)
            if lm.arch.name == "gemma3":  # gemma norms scale by (1 + weight)
                gains = gains - 1
            weight.copy_(gains.to(weight.dtype))
    return lm


@pytest.fixture
def shared_data() -> Path:
    """The data folder named by LMCOMPOSE_DATA_DIR (laid out like shared/data); skips the
    test when it is not set or not there."""
    import os

    raw = os.environ.get("LMCOMPOSE_DATA_DIR")
    if not raw or not Path(raw).is_dir():
        pytest.skip("LMCOMPOSE_DATA_DIR is not set to a data folder (the Makefile sets it when ../shared/data exists)")
    return Path(raw)


@pytest.fixture
def offline_without_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No data folder, no network, an empty cache: datasets fall back to their samples."""
    monkeypatch.delenv("LMCOMPOSE_DATA_DIR", raising=False)
    monkeypatch.setenv("LMCOMPOSE_OFFLINE", "1")
    monkeypatch.setenv("LMCOMPOSE_CACHE_DIR", str(tmp_path / "cache"))


class InterventionConformance:
    """Subclass, set ``intervention`` (and ``config``), and pytest runs the suite."""

    intervention: ClassVar[str] = ""
    config: ClassVar[dict[str, object]] = {}
    architectures: ClassVar[tuple[str, ...]] = TINY_ARCHITECTURES
    n_edits: ClassVar[int] = 4
    calibration_samples: ClassVar[int] = 4
    calibration_seqlen: ClassVar[int] = 32

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "conformance_arch" in metafunc.fixturenames:
            metafunc.parametrize("conformance_arch", list(self.architectures))

    # -- helpers --------------------------------------------------------------------
    def intervention_class(self) -> type[Intervention]:
        from lmcompose.plugins import get_interventions

        return get_interventions().get(self.intervention)

    def make(self, **overrides: object) -> Intervention:
        return self.intervention_class().from_overrides({**self.config, **overrides})

    def make_with_strength(self, value: object) -> Intervention:
        """The intervention at its default config with only the strength set."""
        cls = self.intervention_class()
        if cls.strength is None:
            raise TypeError(f"{cls.name} has no strength knob")
        return cls.from_overrides({cls.strength.field: value})

    def context(self, seed: int = 0) -> Context:
        edits: list[EditRecord] = []
        if self.intervention_class().kind == "edit":
            from lmcompose.compose import load_edits

            edits = load_edits("records", limit=self.n_edits, seed=seed)
        return Context(
            seed=seed,
            edits=edits,
            calibration_samples=self.calibration_samples,
            calibration_seqlen=self.calibration_seqlen,
        )

    def model(self, arch: str, seed: int = 0) -> LM:
        from lmcompose.models.tiny import tiny_model

        return tiny_model(arch, seed=seed)

    def logits(self, lm: LM) -> torch.Tensor:
        import torch

        ids = lm.tokenizer("The river town grew up around a crossing", return_tensors="pt").input_ids
        with torch.no_grad():
            return lm.model(ids).logits

    # -- the suite --------------------------------------------------------------------
    def test_declares_a_complete_interface(self) -> None:
        cls = self.intervention_class()
        assert cls.name == self.intervention
        assert cls.kind, "set `kind` (edit, prune, quantize, ...)"
        assert dataclasses.is_dataclass(cls.Config), "Config must be a dataclass"
        for f in dataclasses.fields(cls.Config):
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, (
                f"field {f.name} needs a default"
            )
            assert f.metadata.get("help"), f"field {f.name} needs metadata={{'help': ...}}"
        if cls.strength is not None:
            assert cls.strength.field in {f.name for f in dataclasses.fields(cls.Config)}

    def test_applies_and_changes_the_model(self, conformance_arch: str) -> None:
        import torch

        lm = self.model(conformance_arch)
        before = _state(lm)
        report = self.make().apply(lm, self.context())
        assert isinstance(report, StepReport)
        assert report.name == self.intervention
        assert not _same(before, _state(lm)), "apply() left every weight unchanged"
        assert torch.isfinite(self.logits(lm)).all()

    def test_is_deterministic_under_a_seed(self, conformance_arch: str) -> None:
        results = []
        for _ in range(2):
            lm = self.model(conformance_arch, seed=0)
            self.make().apply(lm, self.context(seed=0))
            results.append(_state(lm))
        assert _same(*results)

    def test_respects_its_strength_range(self) -> None:
        knob = self.intervention_class().strength
        if knob is None:
            pytest.skip("no strength knob")
        valid = [(knob.low + knob.high) / 2]
        if knob.low_inclusive:
            valid.append(knob.low)
        if knob.high_inclusive:
            valid.append(knob.high)
        span = knob.high - knob.low
        invalid = [knob.low - max(1.0, span), knob.high + max(1.0, span)]
        if not knob.low_inclusive:
            invalid.append(knob.low)
        if not knob.high_inclusive:
            invalid.append(knob.high)
        for v in valid:
            v = int(round(v)) if knob.integer else v
            step = self.make_with_strength(v)
            assert math.isclose(to_float(step.strength_value), float(v))
            assert 0.0 <= knob.normalize(v) <= 1.0
        for v in invalid:
            with pytest.raises(ConfigError):
                self.make_with_strength(v)

    def test_model_stays_saveable_and_loadable(self, conformance_arch: str, tmp_path: Path) -> None:
        import torch

        from lmcompose.models.loading import load_model

        lm = self.model(conformance_arch)
        self.make().apply(lm, self.context())
        expected = self.logits(lm)
        lm.save(tmp_path / "m")
        again = load_model(str(tmp_path / "m"))
        assert torch.allclose(self.logits(again), expected, atol=1e-5)
        assert again.compression.keys() == lm.compression.keys()

    def test_project_is_idempotent_and_restores_the_constraint(self, conformance_arch: str) -> None:
        import torch

        cls = self.intervention_class()
        if not cls.has_project():
            pytest.skip(f"{cls.name} has no project()")
        lm = self.model(conformance_arch)
        step = self.make()
        step.apply(lm, self.context())
        applied = _state(lm)
        step.project(lm)
        assert _same(applied, _state(lm)), "project() right after apply() must change nothing"
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for _name, module in lm.linear_layers():
                weight = module.weight
                assert isinstance(weight, torch.Tensor)
                weight.add_(torch.randn(weight.shape, generator=gen) * 0.01)
        step.project(lm)
        once = _state(lm)
        step.project(lm)
        assert _same(once, _state(lm)), "project() twice must equal project() once"
