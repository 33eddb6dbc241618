"""Export a quantized model as a real packed checkpoint.

``compressed-tensors`` (vLLM's and llm-compressor's format, ``pack-quantized``): every
decoder projection that carries a quantization grid in ``lm.compression`` (rtn, gptq, awq)
is stored as its integer codes packed into int32 words, with its per-(row, group) scale
and (asymmetric grids) packed zero point; everything else stays dense. Transformers loads
the folder (with compressed-tensors installed) and decompresses it to the same weights.

The grids map one to one: lmcompose's codes q ∈ [0, 2^b − 1] with zero z are
compressed-tensors' signed codes q − 2^(b−1) with zero point z − 2^(b−1) (a symmetric
grid's zero point is then 0, as compressed-tensors requires). compressed-tensors needs the
group size to divide each quantized layer's width and plain ``nn.Linear`` layers (not
gpt2's Conv1D); anything else is refused with the layer's name. Layers quantized with
different bits/group sizes become separate config groups: a valid checkpoint, but
transformers 5.x's dequantizing loader applies one scheme to every dense layer, so reload
such a mixed checkpoint with compressed-tensors itself (or vLLM).

compressed-tensors is optional (``pip install "lmcompose-cli[export]"`` or
``pip install compressed-tensors``) and imported only here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from lmcompose.api import Metric
from lmcompose.errors import UsageError

FORMATS = ("compressed-tensors",)


class ExportError(UsageError):
    """A model that cannot be written in the requested format."""


def _require_compressed_tensors() -> Any:
    try:
        import compressed_tensors
    except ImportError:
        raise ExportError(
            "exporting to compressed-tensors needs the compressed-tensors package: "
            'pip install "lmcompose-cli[export]" (or pip install compressed-tensors)'
        ) from None
    return compressed_tensors


def quantized_layers(lm: Any) -> dict[str, Any]:
    """name -> QuantGrid of every projection whose weights lie on their stored grid; raises
    for a grid the weights left (a later step moved them and nothing projected them back)."""
    out = {}
    for name, _module in lm.linear_layers():
        state = lm.compression.get(name)
        grid = getattr(state, "quant", None)
        if grid is None:
            continue
        if not grid.on_grid(lm.weight(name)):
            raise ExportError(
                f"{name}: its weights are no longer on the {grid.bits}-bit grid a quantizer stored "
                "(a later step changed them); rerun with --keep-compressed project so they are snapped back"
            )
        out[name] = grid
    return out


def export_compressed_tensors(lm: Any, out: str | Path) -> Path:
    """Write ``lm`` (unchanged) to ``out`` in compressed-tensors' pack-quantized format."""
    import torch

    _require_compressed_tensors()
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )

    grids = quantized_layers(lm)
    if not grids:
        raise ExportError("no quantized layer to export: the run has no quantization step (rtn, gptq, awq) on its grid")
    groups: dict[tuple[int, int | None, bool], list[str]] = {}
    for name, grid in grids.items():
        module = lm.model.get_submodule(name)
        if not isinstance(module, torch.nn.Linear):
            raise ExportError(f"{name}: {type(module).__name__} layers cannot be written as compressed-tensors (only nn.Linear)")
        in_f = lm.weight(name).shape[1]
        # a group at least as wide as the layer is one group per row: compressed-tensors takes that
        # as a group strategy too, which keeps one scheme for layers of different widths
        g = grid.group_size if grid.group_size > 0 else None  # None: channel strategy
        if g is not None and in_f > g and in_f % g:
            raise ExportError(f"{name}: group size {g} does not divide its width {in_f}; compressed-tensors needs equal groups "
                              "(quantize with a group size that divides every width, or <= 0 for one group per row)")
        groups.setdefault((grid.bits, g, grid.symmetric), []).append(name)

    config_groups = {}
    for k, ((bits, g, symmetric), names) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[0][2]))):
        args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric,
                                strategy="group" if g else "channel", group_size=g)
        config_groups[f"group_{k}"] = QuantizationScheme(targets=names, weights=args)
    config = QuantizationConfig(config_groups=config_groups, quantization_status=QuantizationStatus.FROZEN)

    model = copy.deepcopy(lm.model)
    apply_quantization_config(model, config, show_progress=False)
    with torch.no_grad():
        for name, grid in grids.items():
            module = model.get_submodule(name)
            half = 2 ** (grid.bits - 1)
            scale = grid.scale if module.weight_scale.shape[-1] != 1 or grid.scale.shape[-1] == 1 else grid.scale[:, :1]
            module.weight_scale.data = scale.to(module.weight.dtype).reshape(module.weight_scale.shape).clone()
            zero = (grid.zero - half).round().to(torch.int8)
            module.weight_zero_point.data = zero.reshape(module.weight_scale.shape).to(module.weight_zero_point.dtype).clone()
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    compressor.update_config(str(out))
    lm.tokenizer.save_pretrained(out)
    return out


class _NoMetrics(Metric):
    """Replaying a run for export evaluates nothing."""

    name = "none"

    def compute(self, lm: Any, ctx: Any) -> dict[str, Any]:
        return {}


def load_for_export(source: str | Path, progress: Any = None) -> Any:
    """The model a run ended with, or a saved model folder.

    ``source`` is a folder written by ``LM.save`` (weights + ``lmcompose_compression.json``),
    or the folder of a ``lmcompose run`` (``config.yaml``): runs keep results, not weights, so
    the run's steps are applied again to its model with its seed, dtype, edits and policy
    (calibration is seeded, so the result is the run's model). The base model's fingerprint
    must match the one the run recorded.
    """
    from lmcompose.compose import EDIT_KIND, RunSettings, compose, load_edits, parse_step
    from lmcompose.models.handle import COMPRESSION_META
    from lmcompose.models.loading import load_model
    from lmcompose.plugins import get_interventions
    from lmcompose.results import read_yaml

    folder = Path(source)
    if (folder / "config.json").exists() and (folder / COMPRESSION_META).exists():
        return load_model(str(folder))
    cfg = folder / "config.yaml"
    if not cfg.exists():
        raise ExportError(f"{folder}: neither a run folder (config.yaml) nor a saved model folder (config.json + {COMPRESSION_META})")
    data = read_yaml(cfg)
    known = {f for f in RunSettings.__dataclass_fields__}
    if "vary" in data or "steps" not in data:
        raise ExportError(f"{folder} is not the folder of a single `lmcompose run` (a sweep?); "
                          "export the cell you want by running it with `lmcompose run ... --out DIR` and exporting DIR")
    settings = RunSettings.from_mapping({k: v for k, v in data.items() if k in known}, where=str(cfg))
    settings.validate()
    from lmcompose.api import Context, Progress

    ctx = Context(seed=settings.seed, device=settings.device, dtype=settings.dtype, progress=progress or Progress())
    lm = load_model(settings.model, dtype=settings.dtype, device=settings.device, progress=ctx.progress)
    recorded = data.get("model_fingerprint")
    if recorded and lm.fingerprint() != recorded:
        raise ExportError(f"{settings.model}: the model's weights differ from those run {folder} started from "
                          f"(fingerprint {lm.fingerprint()} != {recorded}); the run cannot be replayed")
    edits = None
    needs_edits = any(get_interventions().get(parse_step(s).name).kind == EDIT_KIND for s in settings.steps)
    if settings.dataset or settings.edits or needs_edits:
        edits = load_edits(settings.dataset or "records", settings.dataset_source, settings.edits, settings.seed,
                           skip_invalid=settings.skip_invalid, ctx=ctx)
    compose(lm, settings.steps, edits=edits, policy=settings.policy, metrics=[_NoMetrics()], seed=settings.seed, ctx=ctx)
    return lm


def export(source: str | Path, out: str | Path, fmt: str = "compressed-tensors", progress: Any = None) -> Path:
    """Write the model of run (or saved model folder) ``source`` to ``out`` in format ``fmt``."""
    if fmt not in FORMATS:
        raise ExportError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    _require_compressed_tensors()
    lm = load_for_export(source, progress)
    return export_compressed_tensors(lm, out)
