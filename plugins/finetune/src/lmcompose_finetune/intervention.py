"""The ft and lora interventions: edits learned by gradient descent on their targets."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from lmcompose.api import Context, Intervention, StepReport, StrengthKnob
from lmcompose.editing import check_layers_exist, rule_layers, select_edits
from lmcompose.errors import ConfigError
from lmcompose.models.arch import decoder_layers, is_conv1d

from lmcompose_finetune.config import FTConfig, LoRAConfig

if TYPE_CHECKING:
    import torch
    from lmcompose import LM
    from peft import PeftModel


class TrainedEdit(Intervention):
    """Base of the fine-tuning editors: edit selection, sequential batches, the report.

    A subclass says which projections it changes (``targets``), which parameters it trains
    (``begin``), what to do after each Adam step (``after_step``) and after all batches
    (``finish``)."""

    kind = "edit"
    strength = StrengthKnob("n_edits", 1, 100000, integer=True)

    def check_layers(self, lm: LM, default: list[int]) -> list[int]:
        layers = sorted(int(i) for i in (self.config.layers if self.config.layers is not None else default))
        check_layers_exist(self.name, layers, len(decoder_layers(lm.model, lm.arch)))
        return layers

    def check_offload(self, lm: LM) -> None:
        if getattr(lm, "offloaded", False):
            raise ConfigError(
                f"step '{self.name}' trains through the whole model and does not support offloaded models "
                "(--device-map with --max-memory); load the model in memory"
            )

    def targets(self, lm: LM) -> list[str]:
        """Names of the projections whose weights the edit changes."""
        raise NotImplementedError

    def begin(self, lm: LM, names: list[str]) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def after_step(self) -> None:
        """After each Adam step."""

    def finish(self, lm: LM) -> None:
        """After the last batch."""

    def apply(self, lm: LM, ctx: Context) -> StepReport:
        from lmcompose.editing import iter_batches

        from lmcompose_finetune.training import train_on_edits

        c = self.config
        start = time.perf_counter()
        self.check_offload(lm)
        records = select_edits(self.name, ctx.edits, c.n_edits, c.batches)
        names = self.targets(lm)
        before = {n: lm.weight(n).detach().clone() for n in names}
        params = self.begin(lm, names)
        per_batch = []
        try:
            for idx in iter_batches(len(records), 0, c.batches):
                batch = [records[i] for i in idx]
                with ctx.progress.task(f"{self.name} ({len(batch)} edits)", c.steps) as advance:
                    res = train_on_edits(
                        lm,
                        batch,
                        params,
                        c.steps,
                        c.lr,
                        c.weight_decay,
                        c.early_stop_loss,
                        c.max_batch_tokens,
                        self.after_step,
                        advance,
                    )
                per_batch.append(res)
        finally:
            self.finish(lm)
        norms = {n: float((lm.weight(n).detach().float() - before[n].float()).norm()) for n in names}
        rep = self.report(
            n_edits=len(records),
            batches=len(per_batch),
            trained=names,
            steps=[r.steps for r in per_batch],
            loss_first=sum(r.loss_first for r in per_batch) / len(per_batch),
            loss_final=sum(r.loss_final for r in per_batch) / len(per_batch),
            converged_batches=sum(1 for r in per_batch if r.loss_final < c.early_stop_loss),
            update_norms=norms,
        )
        rep.elapsed_s = time.perf_counter() - start
        return rep


class FineTune(TrainedEdit):
    """FT-L, constrained fine-tuning (the baseline of ROME, Meng et al. 2022, and MEMIT).

    Lifecycle: ``apply`` takes the first ``n_edits`` of ``ctx.edits`` and, batch after batch,
    runs Adam on the MLP output projections of ``layers`` to lower the target tokens' NLL
    after each prompt, clamping every weight to within ``norm_constraint`` of its value
    before the step after each update. No ``project``. Sample config::

        ft                                  # layers: MEMIT's rule (early-middle MLP layers)
        ft:layers=3+4+5,steps=25,lr=5e-4,norm_constraint=5e-4,batches=5
    """

    name = "ft"
    Config = FTConfig

    def targets(self, lm: LM) -> list[str]:
        c = self.config
        layers = self.check_layers(lm, rule_layers(len(decoder_layers(lm.model, lm.arch))))
        suffixes = list(c.modules) or [lm.arch.mlp_out]
        names = []
        known = {n for n, _ in lm.linear_layers()}
        for i in layers:
            for s in suffixes:
                name = f"{lm.arch.layers}.{i}.{s}"
                if name not in known:
                    options = sorted(
                        {
                            n.split(f"{lm.arch.layers}.{i}.", 1)[1]
                            for n in known
                            if n.startswith(f"{lm.arch.layers}.{i}.")
                        }
                    )
                    raise ConfigError(
                        f"step 'ft': modules: {s!r} is not a projection of layer {i}; this model has "
                        f"{', '.join(options)}"
                    )
                names.append(name)
        return names

    def begin(self, lm: LM, names: list[str]) -> list[torch.nn.Parameter]:
        params = [cast("torch.nn.Parameter", lm.model.get_submodule(n).weight) for n in names]
        self._clamp = [(p, p.detach().clone()) for p in params] if self.config.norm_constraint > 0 else []
        return params

    def after_step(self) -> None:
        import torch

        eps = self.config.norm_constraint
        with torch.no_grad():
            for p, orig in self._clamp:
                p.copy_(torch.clamp(p, min=orig - eps, max=orig + eps))

    def finish(self, lm: LM) -> None:
        self._clamp = []


def lora_targets(lm: LM, patterns: Sequence[str], layers: Sequence[int]) -> list[str]:
    """Full names of the projections matching ``patterns`` in ``layers``; a pattern that
    matches nothing is a ConfigError naming the projections there are."""
    prefixes = tuple(f"{lm.arch.layers}.{i}." for i in layers)
    names = []
    for pat in patterns:
        hits = [n for n, _ in lm.target_layers([pat]) if n.startswith(prefixes)]
        if not hits:
            first = f"{lm.arch.layers}.{layers[0]}."
            leaves = sorted(n[len(first) :] for n, _ in lm.linear_layers() if n.startswith(first))
            raise ConfigError(
                f"step 'lora': target_modules: {pat!r} matches no projection in layers {list(layers)}; "
                f"this model's projections are {', '.join(leaves)}"
            )
        names += [n for n in hits if n not in names]
    return names


def attach_lora(lm: LM, config: LoRAConfig, names: Sequence[str]) -> PeftModel:
    """Wrap ``lm.model`` with a LoRA adapter on ``names`` (in place; seeded); returns the PeftModel."""
    import torch
    from peft import LoraConfig, get_peft_model

    conv1d = is_conv1d(lm.model.get_submodule(names[0]))
    cfg = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,  # type: ignore[arg-type]  # peft declares an int; the scale alpha / r takes a float
        target_modules=list(names),
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=conv1d,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return get_peft_model(lm.model, cfg)


def merge_lora(lm: LM, peft_model: PeftModel) -> None:
    """Fold the adapter into the weights and remove it (``merge_and_unload``): ``lm.model``
    is again the plain model, with ordinary weights."""
    base = peft_model.merge_and_unload()
    if base is not lm.model:  # peft returns the model it wrapped; keep the handle on it either way
        lm.model = base
    if hasattr(lm.model, "peft_config"):  # left on the base model by peft; it is not an adapter any more
        del lm.model.peft_config


class LoRA(TrainedEdit):
    """LoRA (Hu et al., ICLR 2022) through peft, as an editor.

    Lifecycle: ``apply`` takes the first ``n_edits`` of ``ctx.edits``, attaches a rank-``rank``
    adapter to ``target_modules`` of ``layers`` (default: the MLP projections of MEMIT's
    rule layers), trains it batch after batch on the target tokens' NLL (one adapter for all
    batches), and merges it into the weights with ``merge_and_unload``: later steps see
    ordinary weights and compression applies to the merged model. No ``project``. Sample config::

        lora                                # rank 8, alpha 16, the MLP projections of the rule layers
        lora:rank=4,alpha=8,target_modules=mlp.down_proj,layers=3+4+5,steps=40,lr=1e-3
    """

    name = "lora"
    Config = LoRAConfig
    config: LoRAConfig
    _peft: PeftModel | None  # the adapter between begin and finish

    def targets(self, lm: LM) -> list[str]:
        c = self.config
        layers = self.check_layers(lm, rule_layers(len(decoder_layers(lm.model, lm.arch))))
        return lora_targets(lm, list(c.target_modules) or [*lm.arch.mlp_in, lm.arch.mlp_out], layers)

    def begin(self, lm: LM, names: list[str]) -> list[torch.nn.Parameter]:
        self._peft = peft = attach_lora(lm, self.config, names)
        return [p for n, p in peft.named_parameters() if "lora_" in n]

    def finish(self, lm: LM) -> None:
        peft = getattr(self, "_peft", None)
        if peft is not None:
            merge_lora(lm, peft)
            self._peft = None
