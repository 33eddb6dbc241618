"""The unlearners (kind ``unlearn``): GA, GD, NPO and RMU on the fact-unlearning benchmark.

Each trains on the forget set of the benchmark its config names (``facts.py``): the
sentences stating the forget topics' facts, and for a retain term general text (windows of
the calibration corpus), the retain topics' sentences, or both. They train, so they follow
the composition policy as the fine-tuning editors do: under ``project`` every earlier
compressor's ``project()`` runs after them (a pruned model stays pruned, a quantized one
snaps back onto its grid); under ``recompress`` a compressor before them is re-run at the
end. docs/unlearning.md says where each follows its reference and where it does not.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import TYPE_CHECKING, Any, cast

from lmcompose.api import Context, Intervention, StepReport, StrengthKnob
from lmcompose.errors import ConfigError, DataError
from lmcompose.metrics.edits import target_text
from lmcompose.models.arch import decoder_layers

from lmcompose_unlearn.config import GAConfig, GDConfig, NPOConfig, RMUConfig
from lmcompose_unlearn.facts import FactBenchmark, benchmark_for

if TYPE_CHECKING:
    import torch
    from lmcompose import LM

    from lmcompose_unlearn.losses import Example
    from lmcompose_unlearn.training import TrainLog

__all__ = ["GradientAscent", "GradientDifference", "NPO", "RMU", "Unlearner", "TRAINED_ON"]

#: ctx.state key where an unlearner records the topics it unlearned (the metric checks it)
TRAINED_ON = "unlearn-trained-on"


class Unlearner(Intervention):
    """Base of the unlearners: the benchmark, the preset, the examples, the report."""

    kind = "unlearn"
    method = ""

    @property
    def needs_base_model(self) -> bool:  # type: ignore[override]
        """The facts the *unmodified* model knows decide the fact benchmark, whatever ran before
        (the files' benchmark needs no model)."""
        c = self.config
        return bool(c.known_only) and not c.uses_files() and not c.fictitious

    # -- settings -----------------------------------------------------------------------
    def resolved(self, lm: LM) -> tuple[str, Any]:
        """(where the preset values come from, the config with every None field filled)."""
        from lmcompose_unlearn.presets import preset_for

        source, values = preset_for(self.method or self.name, lm)
        fill = {k: v for k, v in values.items() if getattr(self.config, k, None) is None}
        return source, dataclasses.replace(self.config, **fill)

    def check_offload(self, lm: LM) -> None:
        if getattr(lm, "offloaded", False):
            raise ConfigError(
                f"step '{self.name}' trains through the model and does not support offloaded models "
                "(--device-map with --max-memory); load the model in memory"
            )

    def benchmark(self, lm: LM, ctx: Context) -> FactBenchmark:
        c = self.config
        bench = benchmark_for(c, lm, ctx)  # refuses a forget topic without facts (facts.py)
        if not bench.forget_texts:
            raise DataError(
                f"step '{self.name}' has no forget data: the benchmark's files give questions to score "
                f"({', '.join(c.file_fields())}) but no text to train on; add forget_corpus=FILE (documents) or "
                "forget_qa=FILE (question-answer pairs)"
            )
        if bench.retain_train and getattr(c, "retain_data", None) == "text":
            files = ", ".join(k for k in ("retain_corpus", "retain_qa") if getattr(c, k))
            ctx.note(
                f"step '{self.name}' trains its retain term on general text (retain_data=text), not on the retain "
                f"files ({files}); set retain_data=facts (or both) to train on them"
            )
        if bench.kind == "fictitious":
            from lmcompose_unlearn.facts import known_facts

            known = known_facts(lm, bench.forget)
            if not any(known):
                ctx.note(
                    f"step '{self.name}': the model answers none of the {len(bench.forget)} made-up forget facts, so "
                    "there is nothing to unlearn: put the fictitious step first, with the same fictitious=... (e.g. "
                    f"fictitious:fictitious={c.fictitious} {self.name}:fictitious={c.fictitious})"
                )
        ctx.state[TRAINED_ON] = (tuple(bench.forget_topics), tuple(bench.retain_topics), self.name)
        return bench

    # -- examples -----------------------------------------------------------------------
    def fact_examples(self, lm: LM, facts: list[Any], target: str = "sentence") -> list[Example]:
        """Token ids of each training item and where its labels start. A fact or a
        question-answer pair: the whole sentence (from the second token), or only the answer
        after the prompt (``target``). A corpus document: consecutive windows of ``doc_tokens``
        tokens (at most the model's positions), every token a label."""
        from lmcompose_unlearn.sources import Document

        tok = lm.tokenizer
        out: list[Example] = []
        for f in facts:
            if isinstance(f, Document):
                ids = list(tok(f.text, add_special_tokens=True).input_ids)
                width = min(self.config.doc_tokens, lm.max_positions)
                out += [(ids[i : i + width], 1) for i in range(0, len(ids), width) if len(ids[i : i + width]) > 1]
            elif target == "answer":
                p = list(tok(f.prompt, add_special_tokens=True).input_ids)
                a = list(tok(target_text(f.prompt, f.answer), add_special_tokens=False).input_ids)
                out.append((p + a, len(p)))
            else:
                out.append((list(tok(f.sentence, add_special_tokens=True).input_ids), 1))
        return out

    def retain_examples(self, lm: LM, ctx: Context, bench: FactBenchmark, n: int, seed: int) -> list[Example]:
        """``n`` retain examples: windows of the calibration corpus (``text``), the retain
        facts' sentences in a seeded order, repeated as needed (``facts``), or the two
        alternating (``both``)."""
        c = self.config
        if n <= 0:
            return []
        text: list[Example] = []
        facts: list[Example] = []
        if c.retain_data in ("text", "both"):
            windows = ctx.calibration_batches(lm, n, min(c.retain_seqlen, lm.max_positions))
            text = [(row.tolist(), 1) for row in windows]
        if c.retain_data in ("facts", "both"):
            if not bench.retain_texts:
                raise DataError(
                    f"step '{self.name}': retain_data={c.retain_data} but the benchmark has no retain texts (retain "
                    "facts, or retain_corpus / retain_qa files); give retain files or set retain_data=text"
                )
            pool = self.fact_examples(lm, bench.retain_texts)
            random.Random(f"{seed}|retain").shuffle(pool)
            facts = [pool[i % len(pool)] for i in range(n)]
        if c.retain_data == "text":
            return text
        if c.retain_data == "facts":
            return facts
        return [(facts if i % 2 == 0 else text)[i] for i in range(n)]

    # -- parameters ---------------------------------------------------------------------
    def upper_parameters(self, lm: LM, frozen_layers: int) -> list[tuple[str, torch.nn.Parameter]]:
        """What GA, GD and NPO train: with ``frozen_layers`` 0 every parameter; else the
        decoder layers from ``frozen_layers`` (-1: half of them, the ICLR code's 16 of 32) up,
        the final norm and an LM head that is not tied to the embeddings (the embeddings and
        the layers below stay frozen)."""
        n = len(decoder_layers(lm.model, lm.arch))
        if frozen_layers == 0:
            return list(lm.model.named_parameters())
        k = n // 2 if frozen_layers < 0 else frozen_layers
        if k >= n:
            raise ConfigError(
                f"step '{self.name}': frozen_layers={frozen_layers} leaves no decoder layer to train; this model has "
                f"{n} (use at most {n - 1}, -1 for half, or 0 to train every parameter)"
            )
        prefixes = tuple(f"{lm.arch.layers}.{i}." for i in range(k, n)) + (
            f"{lm.arch.final_norm}.",
            f"{lm.arch.lm_head}.",
        )
        embed = lm.model.get_submodule(lm.arch.embed).weight
        return [(name, p) for name, p in lm.model.named_parameters() if name.startswith(prefixes) and p is not embed]

    # -- the run ------------------------------------------------------------------------
    def finish(
        self,
        lm: LM,
        ctx: Context,
        start: float,
        bench: FactBenchmark,
        params: list[tuple[str, torch.nn.Parameter]],
        before: dict[str, torch.Tensor],
        log: TrainLog,
        source: str,
        fix: str,
        **details: Any,
    ) -> StepReport:
        import torch

        if log.stopped is not None:
            ctx.note(
                f"step '{self.name}': training stopped early: {log.stopped}; the model keeps its last finite weights "
                f"({log.steps} optimiser steps). {fix}"
            )
        with torch.no_grad():
            change = sum(float((p.detach().float() - before[n].float()).pow(2).sum()) for n, p in params) ** 0.5
        rep = self.report(
            forget_topics=list(bench.forget_topics),
            retain_topics=list(bench.retain_topics),
            n_forget=len(bench.forget_texts),
            n_retain=len(bench.retain_texts),
            steps=log.steps,
            batches=log.batches,
            loss_first=log.loss_first,
            loss_final=log.loss_final,
            stopped=log.stopped,
            trained_tensors=len(params),
            trained_parameters=sum(p.numel() for _, p in params),
            update_norm=change,
            preset=source,
            **details,
        )
        rep.elapsed_s = time.perf_counter() - start
        return rep


def _nll(lm: LM, batch: list[Example], reduction: str = "mean") -> torch.Tensor:
    from lmcompose.editing import pad_id

    from lmcompose_unlearn.losses import pad_batch, sequence_nll

    ids, attn, labels = pad_batch(batch, pad_id(lm.tokenizer), lm.device)
    logits = lm.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    return sequence_nll(logits, ids, labels, reduction)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class _LossUnlearner(Unlearner):
    """GA, GD and NPO: a loss on NLLs, the upper layers (or everything) trained."""

    strength = StrengthKnob("epochs", 1, 1000, integer=True)
    adamw = False
    uses_retain = False

    def loss(self, lm: LM, forget: list[Example], retain: list[Example] | None, ref: Any) -> torch.Tensor:
        raise NotImplementedError

    def reference_nll(self, lm: LM, batches: list[list[Example]]) -> list[Any]:
        """Per forget batch, what the loss compares against on the model before training (NPO)."""
        return [None] * len(batches)

    def apply(self, lm: LM, ctx: Context) -> StepReport:
        from lmcompose_unlearn.training import train

        start = time.perf_counter()
        self.check_offload(lm)
        source, c = self.resolved(lm)
        bench = self.benchmark(lm, ctx)
        forget = _chunks(self.fact_examples(lm, bench.forget_texts, c.target), c.batch_size)
        refs = self.reference_nll(lm, forget)
        retain: list[list[Example] | None] = [None] * len(forget)
        if self.uses_retain:
            n = sum(len(b) for b in forget) * c.epochs
            pool = self.retain_examples(lm, ctx, bench, n, ctx.seed)
            sizes = [len(b) for b in forget] * c.epochs
            cuts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
            retain = [pool[cuts[i] : cuts[i + 1]] for i in range(len(sizes))]
        batches = [
            (forget[i % len(forget)], retain[i] if self.uses_retain else None, refs[i % len(forget)])
            for i in range(len(forget) * c.epochs)
        ]
        params = self.upper_parameters(lm, c.frozen_layers)
        before = {n: p.detach().clone() for n, p in params}
        with ctx.progress.task(f"{self.name} ({len(bench.forget_texts)} forget texts)", len(batches)) as advance:
            log = train(
                lm,
                params,
                batches,
                lambda b: self.loss(lm, b[0], b[1], b[2]),
                lr=c.lr,
                weight_decay=c.weight_decay,
                grad_accum=c.grad_accum,
                adamw=self.adamw,
                advance=advance,
            )
        return self.finish(
            lm,
            ctx,
            start,
            bench,
            params,
            before,
            log,
            source,
            f"Lower lr (now {c.lr:g}){self.fix_hint(c)}.",
            epochs=c.epochs,
            lr=c.lr,
        )

    def fix_hint(self, c: Any) -> str:
        return ""


class GradientAscent(_LossUnlearner):
    """Gradient ascent (GA): minimise -NLL of the forget facts, as the ICLR code's ``apply_ga``.

    Lifecycle: ``apply`` builds the benchmark (the facts the unmodified model knows; the
    forget topics), and runs Adam over the forget sentences in batches of ``batch_size``,
    ``epochs`` times, one step per ``grad_accum`` batches, training the upper half of the
    decoder layers, the final norm and an untied LM head. No retain term: perplexity is
    free to grow. No ``project``. Sample config::

        ga                                  # lr 5e-5, one epoch (the preset for the model, if any)
        ga:epochs=5,lr=1e-4,forget_topics=P103
    """

    name = "ga"
    method = "ga"
    Config = GAConfig

    def loss(self, lm: LM, forget: list[Example], retain: list[Example] | None, ref: Any) -> torch.Tensor:
        from lmcompose_unlearn.losses import ga_loss

        return ga_loss(_nll(lm, forget))


class GradientDifference(_LossUnlearner):
    """Gradient difference (GD): -NLL(forget) + w NLL(retain), as the ICLR code's ``apply_ga``
    with its retain term (w = 40).

    Lifecycle: as ``ga``, each forget batch paired with a retain batch of the same size
    (general text by default, ``retain_data``). No ``project``. Sample config::

        gd                                  # w 40, lr 5e-5, batch 2, one epoch
        gd:retain_weight=1,retain_data=both,epochs=3
    """

    name = "gd"
    method = "gd"
    Config = GDConfig
    uses_retain = True

    def loss(self, lm: LM, forget: list[Example], retain: list[Example] | None, ref: Any) -> torch.Tensor:
        from lmcompose_unlearn.losses import gd_loss

        assert retain is not None
        return gd_loss(_nll(lm, forget), _nll(lm, retain), self.config.retain_weight)

    def fix_hint(self, c: Any) -> str:
        return f" or retain_weight (now {c.retain_weight:g})"


class NPO(_LossUnlearner):
    """Negative preference optimisation (Zhang et al. 2024) as open-unlearning's ``NPO``:
    -(2/β) log σ(-β (NLL_ref - NLL)) on the forget facts' answers plus α NLL(retain).

    Lifecycle: ``apply`` computes each forget batch's summed answer NLL on the model as it
    is (the reference, no copy kept), then runs AdamW on every parameter over the forget
    batches ``epochs`` times with a retain batch beside each (α = ``retain_weight``; 0 =
    NPO alone). No ``project``. Sample config::

        npo                                 # beta 0.1, retain weight 1, lr 1e-5, 10 epochs
        npo:retain_weight=0,epochs=5,beta=0.2
    """

    name = "npo"
    method = "npo"
    Config = NPOConfig
    adamw = True

    @property
    def uses_retain(self) -> bool:  # type: ignore[override]
        return self.config.retain_weight > 0

    def reference_nll(self, lm: LM, batches: list[list[Example]]) -> list[Any]:
        import torch

        with torch.no_grad():
            return [_nll(lm, b, "sum").detach() for b in batches]

    def loss(self, lm: LM, forget: list[Example], retain: list[Example] | None, ref: Any) -> torch.Tensor:
        from lmcompose_unlearn.losses import npo_loss

        loss = npo_loss(_nll(lm, forget, "sum"), ref, self.config.beta)
        if retain:
            loss = loss + self.config.retain_weight * _nll(lm, retain).mean()
        return loss

    def fix_hint(self, c: Any) -> str:
        return f" or raise beta (now {c.beta:g})"


class RMU(Unlearner):
    """Representation misdirection (RMU; Li et al. 2024, the WMDP code's ``run_rmu``).

    Lifecycle: ``apply`` builds the benchmark, draws one control vector per forget topic
    (u = c r/|r|, r uniform in [0, 1), seeded by the run's seed), records the layer-l
    residual of the model as it is on the retain batches (the frozen copy's activations,
    without keeping a copy), and runs AdamW on the MLP down projections (by name) of layers
    l-2, l-1, l only: per batch, MSE(h_l(forget), u) + α MSE(h_l(retain), frozen), forget
    topics alternating, at most ``max_batches`` steps. No ``project``. Sample config::

        rmu                                 # layer, c, alpha: the preset for the model, else the reference's
        rmu:layer=5,steering_coeff=20,alpha=100,max_batches=40
    """

    name = "rmu"
    method = "rmu"
    Config = RMUConfig
    strength = StrengthKnob("steering_coeff", 0.0, 1e4, low_inclusive=False)

    def trained(self, lm: LM, layer: int) -> list[tuple[str, torch.nn.Parameter]]:
        """The MLP output ("down") projections of layers l-2, l-1, l, chosen by name."""
        n = len(decoder_layers(lm.model, lm.arch))
        if layer >= n:
            raise ConfigError(
                f"step 'rmu': layer={layer} is beyond the model: it has decoder layers 0-{n - 1}; choose a layer "
                f"<= {n - 1}"
            )
        names = [f"{lm.arch.layers}.{i}.{lm.arch.mlp_out}" for i in range(max(0, layer - 2), layer + 1)]
        return [(f"{name}.weight", cast("torch.nn.Parameter", lm.model.get_submodule(name).weight)) for name in names]

    def apply(self, lm: LM, ctx: Context) -> StepReport:
        import torch
        from lmcompose.editing import pad_id

        from lmcompose_unlearn.losses import control_vector, pad_batch, rmu_loss
        from lmcompose_unlearn.training import layer_output, train

        start = time.perf_counter()
        self.check_offload(lm)
        source, c = self.resolved(lm)
        params = self.trained(lm, c.layer)
        bench = self.benchmark(lm, ctx)
        pad = pad_id(lm.tokenizer)
        topics = bench.topics_of(bench.forget_texts)
        chunks = [_chunks(self.fact_examples(lm, facts), c.batch_size) for facts in topics]
        # unset: as many passes as reach max_batches (the reference's 80 steps), never one pass of a few batches
        epochs = c.epochs or -(-c.max_batches // min(len(ch) for ch in chunks))
        forget = [ch * epochs for ch in chunks]
        n_batches = min(c.max_batches, min(len(f) for f in forget))
        n_retain_batches = (n_batches - 1) // len(topics) + 1
        retain = _chunks(self.retain_examples(lm, ctx, bench, n_retain_batches * c.batch_size, ctx.seed), c.batch_size)
        gen = torch.Generator().manual_seed(int(ctx.seed))
        hidden = cast(torch.Tensor, lm.model.get_input_embeddings().weight).shape[1]
        controls = [control_vector(hidden, c.steering_coeff, gen).to(lm.device) for _ in topics]
        frozen = []
        with torch.no_grad():
            for b in retain:
                ids, attn, _ = pad_batch(b, pad, lm.device)
                frozen.append(layer_output(lm, c.layer, ids, attn).detach())
            norms = []
            for b in (f[0] for f in forget):
                ids, attn, _ = pad_batch(b, pad, lm.device)
                h = layer_output(lm, c.layer, ids, attn).float()
                norms.append(float(h.norm(dim=-1)[attn.bool()].mean()))
        batches = [(i % len(topics), i // len(topics)) for i in range(n_batches)]
        parts: list[tuple[float, float]] = []

        def loss_of(step: tuple[int, int]) -> torch.Tensor:
            t, b = step
            f_ids, f_attn, _ = pad_batch(forget[t][b], pad, lm.device)
            r_ids, r_attn, _ = pad_batch(retain[b], pad, lm.device)
            h_f = layer_output(lm, c.layer, f_ids, f_attn)
            h_r = layer_output(lm, c.layer, r_ids, r_attn)
            total, f_term, r_term = rmu_loss(h_f, controls[t], f_attn.bool(), h_r, frozen[b], r_attn.bool(), c.alpha)
            parts.append((float(f_term.detach()), float(r_term.detach())))
            return total

        before = {n: p.detach().clone() for n, p in params}
        what = f"rmu ({len(bench.forget_texts)} forget texts, layer {c.layer})"
        with ctx.progress.task(what, len(batches)) as advance:
            log = train(lm, params, batches, loss_of, lr=c.lr, grad_accum=1, adamw=True, advance=advance)
        return self.finish(
            lm,
            ctx,
            start,
            bench,
            params,
            before,
            log,
            source,
            f"Lower steering_coeff (now {c.steering_coeff:g}), alpha (now {c.alpha:g}) or lr (now {c.lr:g}).",
            layer=c.layer,
            steering_coeff=c.steering_coeff,
            alpha=c.alpha,
            epochs=epochs,
            forget_activation_norm=sum(norms) / len(norms),
            unlearn_loss_first=parts[0][0] if parts else None,
            unlearn_loss_final=parts[-1][0] if parts else None,
            retain_loss_first=parts[0][1] if parts else None,
            retain_loss_final=parts[-1][1] if parts else None,
        )
