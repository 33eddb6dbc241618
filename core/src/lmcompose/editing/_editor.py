"""``LocateThenEdit``, the base intervention of locate-then-edit editors. Importing it needs
no torch (the engine loads intervention classes to validate configs); the work is in
``lmcompose.editing._locate`` and ``lmcompose.editing._vstar``, imported when a step runs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lmcompose.api import Context, EditRecord, Intervention, StepReport, StrengthKnob
from lmcompose.editing._config import EditHParams, HParamValue, check_layers_exist, select_edits

if TYPE_CHECKING:
    import torch

    from lmcompose.models.handle import LM


class LocateThenEdit(Intervention):
    """Base of locate-then-edit editors (MEMIT, AlphaEdit): v*, keys and the spread are shared;
    a subclass names its ``HParams`` (the frozen hyperparameters its presets fill, an
    ``EditHParams`` with the method's own fields), ``preset_for(lm)`` and ``solve``; it may
    keep state across the batches of one step (``begin``, ``end_batch``).

    Lifecycle: ``apply`` takes the first ``n_edits`` of ``ctx.edits``, computes the key
    covariance of every edit layer (cached), calls ``begin``, then for each batch optimises
    v* and spreads it (``spread_residual`` with ``solve``) and calls ``end_batch``. There is
    no ``project``: an edit is not a constraint to restore."""

    kind = "edit"
    strength = StrengthKnob("n_edits", 1, 100000, integer=True)
    HParams: type[EditHParams] = EditHParams

    @property
    def needs_base_model(self) -> bool:  # type: ignore[override]
        return self.config.stats_from == "base"

    # ------------------------------------------------------------------ method-specific
    def preset_for(self, lm: LM) -> tuple[str, dict[str, HParamValue]]:
        raise NotImplementedError

    def begin(self, lm: LM, hp: EditHParams, covs: dict[int, torch.Tensor], ctx: Context) -> dict[str, object]:
        """Prepare the method's state for this step (covariances by layer); returns details for the report."""
        return {}

    def solve(self, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        """The (d_out, d_in) change of ``layer``'s projection for keys (d_in, n) and residuals (d_out, n)."""
        raise NotImplementedError

    def end_batch(self, lm: LM, batch: Sequence[EditRecord], templates: Sequence[str], layers: Sequence[int]) -> None:
        """After a batch is written (the weights hold it)."""

    # ------------------------------------------------------------------ shared
    def hparams(self, lm: LM) -> tuple[str, EditHParams]:
        """(where they come from, the hyperparameters for ``lm``, an instance of ``HParams``):
        config fields that are set, the preset for the rest."""
        from lmcompose.models.arch import decoder_layers

        where, values = self.preset_for(lm)
        explicit = {k: getattr(self.config, k) for k in self.HParams.names() if getattr(self.config, k) is not None}
        values.update(explicit)
        source = where if not explicit else f"{where}, overridden: {', '.join(sorted(explicit))}"
        hp = self.HParams.from_values(values, f"step '{self.name}' ({source})")
        check_layers_exist(self.name, list(hp.layers), len(decoder_layers(lm.model, lm.arch)))
        return source, hp

    def apply(self, lm: LM, ctx: Context) -> StepReport:
        from lmcompose.data import calibration_windows
        from lmcompose.editing._locate import iter_batches
        from lmcompose.editing._vstar import context_templates, optimize_vstar
        from lmcompose.stats import second_moments

        c = self.config
        start = time.perf_counter()
        records = select_edits(self.name, ctx.edits, c.n_edits, c.batches)
        source, hp = self.hparams(lm)
        layers = list(hp.layers)
        z = layers[-1]
        arch = lm.arch
        out_names = {i: f"{arch.layers}.{i}.{arch.mlp_out}" for i in layers}
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        templates = context_templates(lm, c.context_templates, c.template_tokens, ctx.seed)
        timings["templates_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        seqlen = min(c.stats_seqlen, lm.max_positions)
        windows = calibration_windows(lm.tokenizer, c.stats_samples, seqlen, c.stats_seed, ctx)
        stats_lm = lm
        if c.stats_from == "base":
            if ctx.base_model is not None:
                stats_lm = ctx.base_model
            else:
                ctx.note(
                    f"{self.name}: stats_from=base but no base model in the context (apply() called directly); "
                    "statistics from the model being edited"
                )
        stats = second_moments(
            stats_lm,
            list(out_names.values()),
            windows,
            ctx.stats_dir(),
            progress=ctx.progress,
            description=f"{self.name} covariance statistics",
        )
        timings["stats_s"] = time.perf_counter() - t0
        stats_cached = all(s["cached"] for s in stats.values())
        t0 = time.perf_counter()
        method_details = self.begin(lm, hp, {i: stats[out_names[i]]["mom2"] for i in layers}, ctx)
        if method_details:
            timings["prepare_s"] = time.perf_counter() - t0

        vstar_steps: list[int] = []
        final_loss: list[float] = []
        first_loss: list[float] = []
        forward_steps = 0
        tokens_first = 0
        update_norms: dict[str, float] = {}
        timings["vstar_s"] = 0.0
        timings["update_s"] = 0.0
        batches = list(iter_batches(len(records), c.batch_size, c.batches))
        for b, idx in enumerate(batches):
            batch = [records[i] for i in idx]
            t0 = time.perf_counter()
            with ctx.progress.task(f"{self.name} v* ({len(batch)} edits)", hp.v_num_grad_steps) as advance:
                vs = optimize_vstar(
                    lm, batch, templates, z, hp, c.early_stop_loss, c.max_batch_tokens, c.compute_dtype, advance
                )
            timings["vstar_s"] += time.perf_counter() - t0
            vstar_steps += vs.steps
            first_loss += vs.first_loss
            final_loss += vs.final_loss
            forward_steps += vs.forward_steps
            tokens_first = max(tokens_first, vs.tokens_first_step)

            t0 = time.perf_counter()
            norms = self.write(lm, batch, vs.target, templates, layers)
            self.end_batch(lm, batch, templates, layers)
            for name, value in norms.items():
                update_norms[name if len(batches) == 1 else f"{name}#batch{b}"] = value
            timings["update_s"] += time.perf_counter() - t0

        rep = self.report(
            n_edits=len(records),
            layers=layers,
            hparams=hp.as_dict(),
            hparams_source=source,
            batches=len(batches),
            templates=templates,
            stats_tokens=int(next(iter(stats.values()))["tokens"]),
            stats_cached=stats_cached,
            stats_fingerprints={n: s["fingerprint"] for n, s in stats.items()},
            vstar_forward_steps=forward_steps,
            vstar_steps_mean=sum(vstar_steps) / len(vstar_steps),
            vstar_steps_max=max(vstar_steps),
            vstar_tokens_first_step=tokens_first,
            vstar_loss_first=sum(first_loss) / len(first_loss),
            vstar_loss_final=sum(final_loss) / len(final_loss),
            vstar_converged=sum(1 for x in final_loss if x < c.early_stop_loss),
            update_norms=update_norms,
            **method_details,
            **{k: round(v, 3) for k, v in timings.items()},
        )
        rep.elapsed_s = time.perf_counter() - start
        return rep

    def write(
        self,
        lm: LM,
        batch: Sequence[EditRecord],
        targets: torch.Tensor,
        templates: Sequence[str],
        layers: Sequence[int],
    ) -> dict[str, float]:
        """Spread one batch's v* targets over ``layers`` with this method's ``solve``."""
        from lmcompose.editing._locate import spread_residual

        c = self.config
        return spread_residual(lm, batch, targets, templates, layers, self.solve, c.max_batch_tokens, c.compute_dtype)
