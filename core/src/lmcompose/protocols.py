"""Protocols: a named set of choices applied to a run, sweep or study in one place.

``protocol: paper`` (``--protocol paper``) sets what *Composing Knowledge and Compression
Interventions for Language Models* ran, where lmcompose's defaults differ:

* GPTQ symmetric, with act-order and true-sequential calibration (AutoGPTQ's sym=True,
  desc_act=True, true_sequential=True);
* policy ``recompress`` (no projection between steps; every compressor that ran before an
  edit runs again at the end), except AWQ, which is not re-applied (``awq.recompress=false``);
* AWQ's clip search skips the query/key projections (``awq.clip_qk=false``, llm-awq's rule);
* MEMIT's covariance from the base model whatever came before (``memit.stats_from=base``);
* perplexity over every window of wikitext-2 test at the model's sequence length (its
  maximum positions);
* locality as the paper's code scores it (composable-interventions, ``utils/evals.py``
  ``f1_locality_generate``): F1 of the greedy answer to each neighbour prompt against its
  ground-truth answer (``edit.locality_scorer=neighbour_knowledge``), which measures what the
  model knows of the neighbours rather than what an edit left unchanged (the default,
  ``preservation``; docs/metrics.md).

A field written on a step, a metric option given, or a field a sweep varies always wins
over the protocol; the policy is the protocol's. The default protocol changes nothing.
docs/replication.md lists each choice beside lmcompose's default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, overload

from lmcompose.errors import UnknownNameError

if TYPE_CHECKING:
    from lmcompose.steps import StepLike, StepSpec

__all__ = ["PROTOCOLS", "Protocol", "get_protocol"]

#: A perplexity window length no model reaches: the metric cuts it to the model's positions.
MODEL_SEQLEN = 1 << 20


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    step_fields: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    policy: str | None = None
    metric_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    @overload
    def steps(self, steps: Sequence[StepSpec], varied: Sequence[tuple[str, str]] = ()) -> list[StepSpec]: ...

    @overload
    def steps(self, steps: Sequence[StepLike], varied: Sequence[tuple[str, str]] = ()) -> list[StepLike]: ...

    def steps(
        self, steps: Sequence[StepLike], varied: Sequence[tuple[str, str]] = ()
    ) -> list[StepSpec] | list[StepLike]:
        """``steps`` (as written: text, mappings or StepSpecs) with the protocol's fields filled
        in where the step does not set them and a sweep does not vary them: each as given (a
        StepSpec stays one; text or a mapping the protocol fills becomes text)."""
        from lmcompose.steps import parse_step

        out: list[StepLike] = []
        for step in steps:
            spec = parse_step(step)
            extra = {
                k: v
                for k, v in self.step_fields.get(spec.name, {}).items()
                if k not in spec.overrides and (spec.name, k) not in varied
            }
            if not extra:
                out.append(step)
                continue
            filled = type(spec)(spec.name, {**spec.overrides, **extra})
            out.append(filled if step is spec else str(filled))  # as given: a StepSpec, or its text
        return out

    def options(self, metric_options: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, object]]:
        """Metric options with the protocol's filled in where not given."""
        out = {k: dict(v) for k, v in metric_options.items()}
        for metric, fields in self.metric_options.items():
            out[metric] = {**fields, **out.get(metric, {})}
        return out


PROTOCOLS: dict[str, Protocol] = {
    "default": Protocol("default", "lmcompose's defaults (docs/replication.md says where they differ from the paper)"),
    "paper": Protocol(
        "paper",
        "the paper's choices: symmetric act-order true-sequential GPTQ, recompress (AWQ not re-applied), "
        "MEMIT statistics of the base model, perplexity over all of wikitext-2 test at the model's length, "
        "locality as F1 against the neighbours' answers (neighbour_knowledge)",
        step_fields={
            "gptq": {"symmetric": True, "act_order": True, "true_sequential": True},
            "awq": {"recompress": False, "clip_qk": False},
            "memit": {"stats_from": "base"},
        },
        policy="recompress",
        metric_options={
            "perplexity": {"max_tokens": 0, "seqlen": MODEL_SEQLEN},
            "edit": {"locality_scorer": "neighbour_knowledge"},
        },
    ),
}


def get_protocol(name: object, where: str = "protocol") -> Protocol:
    if not isinstance(name, str) or name not in PROTOCOLS:
        raise UnknownNameError(where, str(name), list(PROTOCOLS))
    return PROTOCOLS[name]
