"""The conformance suite (lmcompose.testing) on the built-in and test-plugin interventions."""

from __future__ import annotations

import pytest
from lmcompose.testing import InterventionConformance


class TestMagnitudeConformance(InterventionConformance):
    intervention = "magnitude"
    config = {"sparsity": 0.5}


class TestMagnitudeNMConformance(InterventionConformance):
    intervention = "magnitude"
    config = {"structure": "2:4"}


class TestRTNConformance(InterventionConformance):
    intervention = "rtn"
    config = {"bits": 3, "group_size": 32}


class TestTestPluginConformance(InterventionConformance):
    """The suite also runs on an intervention from an in-test plugin."""

    intervention = "scale_weights"
    architectures = ("llama", "gpt2")

    @pytest.fixture(autouse=True)
    def _plugin(self, register):
        from tests.plugins import example_plugin

        register(example_plugin, "example-conformance")


def test_the_suite_catches_a_nondeterministic_intervention(register):
    """A suite that cannot fail is worthless: feed it a broken intervention."""
    import torch
    from lmcompose import Intervention, hookimpl

    from tests.plugins.example_plugin import ScaleConfig

    class Noisy(Intervention):
        name = "noisy_test"
        kind = "test"
        Config = ScaleConfig

        def apply(self, lm, ctx):
            with torch.no_grad():
                for name, _ in lm.linear_layers():
                    lm.weight(name).add_(torch.randn_like(lm.weight(name)))
            return self.report()

    class Plugin:
        @hookimpl
        def register_interventions(self, register):
            register(Noisy)

    register(Plugin(), "noisy")

    class Suite(InterventionConformance):
        intervention = "noisy_test"

    with pytest.raises(AssertionError):
        Suite().test_is_deterministic_under_a_seed("llama")
