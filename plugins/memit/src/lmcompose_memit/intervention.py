"""The memit intervention: MEMIT on any architecture spec in core."""

from __future__ import annotations

import time
from typing import Any

from lmcompose.api import Context, Intervention, StepReport, StrengthKnob
from lmcompose.errors import ConfigError, DataError

from lmcompose_memit.config import MEMITConfig

HPARAMS = ("layers", "mom2_update_weight", "v_num_grad_steps", "v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor")


class MEMIT(Intervention):
    """Mass-Editing Memory in a Transformer (Meng et al., ICLR 2023).

    Lifecycle: ``apply`` takes ``ctx.edits`` (the first ``n_edits``), computes the covariance
    statistics of the edit layers' MLP inputs (cached by the weights that produce them),
    optimises each edit's target hidden state v* at the last edit layer, and spreads the
    residual over the edit layers as covariance-weighted rank updates of their MLP output
    projections (one layer at a time on an offloaded model); it has no ``project`` (an edit
    is not a constraint to restore). Sample config::

        memit                               # the preset for the model (presets.py)
        memit:layers=3+4+5+6+7,v_num_grad_steps=25,mom2_update_weight=15000,stats_from=base
    """

    name = "memit"
    kind = "edit"
    Config = MEMITConfig
    strength = StrengthKnob("n_edits", 1, 100000, integer=True)

    @property
    def needs_base_model(self) -> bool:  # type: ignore[override]
        return self.config.stats_from == "base"

    def hparams(self, lm: Any) -> tuple[str, dict[str, Any]]:
        """The hyperparameters for ``lm``: config fields that are set, the preset for the rest."""
        from lmcompose.models.arch import decoder_layers

        from lmcompose_memit.presets import preset_for

        where, values = preset_for(lm)
        explicit = {k: getattr(self.config, k) for k in HPARAMS if getattr(self.config, k) is not None}
        values.update(explicit)
        values["layers"] = sorted(int(i) for i in values["layers"])
        n_layers = len(decoder_layers(lm.model, lm.arch))
        bad = [i for i in values["layers"] if i >= n_layers]
        if bad:
            raise ConfigError(f"step 'memit': layers {bad} do not exist; this model has decoder layers 0-{n_layers - 1}")
        return (where if not explicit else f"{where}, overridden: {', '.join(sorted(explicit))}"), values

    def spread(self, lm: Any, batch: list[Any], targets: Any, templates: list[str], layers: list[int], lam: float,
               covs: dict[int, Any]) -> dict[str, float]:
        """Write the v* ``targets`` (edits x hidden, at the last edit layer) into the MLP output
        projections of ``layers`` (MEMIT Alg. 1, lines 7-13). Returns |ΔW| per layer."""
        import torch

        from lmcompose_memit import algorithm as alg

        c, arch = self.config, lm.arch
        z = layers[-1]
        bare = [alg.Row(*alg.subject_last_index(lm.tokenizer, r.prompt, r.prompt.index(r.subject) + len(r.subject)), e)
                for e, r in enumerate(batch)]
        krows = alg.key_rows(lm.tokenizer, batch, templates)
        norms = {}
        for i, layer in enumerate(layers):
            name = f"{arch.layers}.{layer}.{arch.mlp_out}"
            k_all = alg.module_values_at(lm, krows, name, "input", c.max_batch_tokens, c.compute_dtype)
            keys = alg.template_key_mean(k_all, len(batch), len(templates))
            # where the last edit layer's output stands now, after the layers below were edited
            cur = alg.module_values_at(lm, bare, f"{arch.layers}.{z}", "output", c.max_batch_tokens, c.compute_dtype)
            resid = (targets - cur).T / (len(layers) - i)  # spread over the remaining layers
            with lm.onloaded(f"{arch.layers}.{layer}"):  # an offloaded model: this layer's weights, stored back after
                if arch.mlp_post_norm:  # the residual moves by norm(out + d) - norm(out), not by d
                    out = alg.module_values_at(lm, bare, name, "output", c.max_batch_tokens, c.compute_dtype)
                    norm = lm.model.get_submodule(f"{arch.layers}.{layer}.{arch.mlp_post_norm}")
                    resid = alg.through_post_norm(norm, arch.norm_offset, out, resid.T).T
                delta = alg.memit_delta(keys.T, resid, covs[layer], lam)
                w = lm.weight(name)
                with torch.no_grad():
                    w.add_(delta.to(device=w.device, dtype=w.dtype))
            norms[name] = float(delta.norm())
        return norms

    def apply(self, lm: Any, ctx: Context) -> StepReport:
        from lmcompose.data import calibration_windows
        from lmcompose.stats import second_moments

        from lmcompose_memit import algorithm as alg

        c = self.config
        start = time.perf_counter()
        records = list(ctx.edits)
        if not records:
            raise DataError("step 'memit' needs edit requests: pass --dataset (and --edits N), or use the bundled 'records'")
        if c.n_edits is not None:
            if c.n_edits > len(records):
                raise ConfigError(f"step 'memit': n_edits={c.n_edits} but the run has only {len(records)} edits; pass --edits {c.n_edits} or more")
            records = records[: c.n_edits]
        source, hp = self.hparams(lm)
        layers = hp["layers"]
        z = layers[-1]
        arch = lm.arch
        out_names = {i: f"{arch.layers}.{i}.{arch.mlp_out}" for i in layers}
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        templates = alg.context_templates(lm, c.context_templates, c.template_tokens, ctx.seed)
        timings["templates_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        seqlen = min(c.stats_seqlen, lm.max_positions)
        windows = calibration_windows(lm.tokenizer, c.stats_samples, seqlen, c.stats_seed, ctx)
        stats_lm = lm
        if c.stats_from == "base":
            if ctx.base_model is not None:
                stats_lm = ctx.base_model
            else:
                ctx.note("memit: stats_from=base but no base model in the context (apply() called directly); "
                         "statistics from the model being edited")
        stats = second_moments(stats_lm, list(out_names.values()), windows, ctx.stats_dir(), progress=ctx.progress,
                               description="memit covariance statistics")
        timings["stats_s"] = time.perf_counter() - t0
        stats_cached = all(s["cached"] for s in stats.values())

        vstar_steps: list[int] = []
        final_loss: list[float] = []
        first_loss: list[float] = []
        forward_steps = 0
        tokens_first = 0
        update_norms: dict[str, float] = {}
        timings["vstar_s"] = 0.0
        timings["update_s"] = 0.0
        batches = list(alg.iter_batches(len(records), c.batch_size))
        for b, idx in enumerate(batches):
            batch = [records[i] for i in idx]
            t0 = time.perf_counter()
            with ctx.progress.task(f"memit v* ({len(batch)} edits)", int(hp["v_num_grad_steps"])) as advance:
                vs = alg.optimize_vstar(lm, batch, templates, z, hp, c.early_stop_loss, c.max_batch_tokens,
                                        c.compute_dtype, advance)
            timings["vstar_s"] += time.perf_counter() - t0
            vstar_steps += vs.steps
            first_loss += vs.first_loss
            final_loss += vs.final_loss
            forward_steps += vs.forward_steps
            tokens_first = max(tokens_first, vs.tokens_first_step)

            t0 = time.perf_counter()
            norms = self.spread(lm, batch, vs.target, templates, layers, float(hp["mom2_update_weight"]),
                                {i: stats[out_names[i]]["mom2"] for i in layers})
            for name, value in norms.items():
                update_norms[name if len(batches) == 1 else f"{name}#batch{b}"] = value
            timings["update_s"] += time.perf_counter() - t0

        rep = self.report(
            n_edits=len(records), layers=layers, hparams=hp, hparams_source=source, batches=len(batches),
            templates=templates, stats_tokens=int(next(iter(stats.values()))["tokens"]), stats_cached=stats_cached,
            stats_fingerprints={n: s["fingerprint"] for n, s in stats.items()},
            vstar_forward_steps=forward_steps, vstar_steps_mean=sum(vstar_steps) / len(vstar_steps),
            vstar_steps_max=max(vstar_steps), vstar_tokens_first_step=tokens_first,
            vstar_loss_first=sum(first_loss) / len(first_loss), vstar_loss_final=sum(final_loss) / len(final_loss),
            vstar_converged=sum(1 for x in final_loss if x < c.early_stop_loss),
            update_norms=update_norms, **{k: round(v, 3) for k, v in timings.items()},
        )
        rep.elapsed_s = time.perf_counter() - start
        return rep
