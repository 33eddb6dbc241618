"""Export a compressed model as a real checkpoint: compressed-tensors (vLLM's and
llm-compressor's format), which plain ``AutoModelForCausalLM.from_pretrained`` loads.

Every decoder projection that carries a quantization grid in ``lm.compression`` (rtn, gptq,
awq) is stored as its integer codes with its per-(row, group) scale and zero point:
``pack-quantized`` (codes packed into int32 words) when every grid is symmetric,
``int-quantized`` (one int8 per code) when any is asymmetric — transformers 5.24 reloads a
packed asymmetric zero point at the wrong size, so ``auto`` chooses the layout it loads;
``--quantization-format pack-quantized`` forces packing (vLLM's weight-only kernels read it),
with a warning for an asymmetric grid: that checkpoint loads in transformers only with
``CompressedTensorsConfig(dequantize=True)``.
Pruned projections (magnitude, sparsegpt, wanda) stay dense and are declared in the config's
``sparsity_config`` (structure ``2:4`` or ``unstructured``, global sparsity, targets); a model
both pruned and quantized has both. Everything else stays dense.

The grids map one to one: lmcompose's codes q ∈ [0, 2^b − 1] with zero z are
compressed-tensors' signed codes q − 2^(b−1) with zero point z − 2^(b−1) (a symmetric
grid's zero point is then 0, as compressed-tensors requires). compressed-tensors needs the
group size to divide each quantized layer's width and plain ``nn.Linear`` layers (not
gpt2's Conv1D); anything else is refused with the layer's name.

compressed-tensors is optional (``pip install "lmcompose-cli[export]"`` or
``pip install compressed-tensors``) and imported only here.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, cast

from lmcompose.api import Context, Metric, Progress
from lmcompose.errors import UsageError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from lmcompose.models.handle import LM
    from lmcompose.quant import QuantGrid

FORMATS = ("compressed-tensors",)


class ExportError(UsageError):
    """A model that cannot be written in the requested format."""


class ExportWarning(UserWarning):
    """A checkpoint written as asked that a plain loader cannot read as is."""


def _warn(progress: Progress | None, message: str) -> None:
    """``message`` as a note of ``progress`` (the CLI prints it), else as an ExportWarning."""
    if progress is not None:
        progress.note(message)
    else:
        import warnings

        warnings.warn(message, ExportWarning, stacklevel=3)


def _require_compressed_tensors() -> ModuleType:
    try:
        import compressed_tensors
    except ImportError:
        raise ExportError(
            "exporting to compressed-tensors needs the compressed-tensors package: "
            'pip install "lmcompose-cli[export]" (or pip install compressed-tensors)'
        ) from None
    return compressed_tensors


def quantized_layers(lm: LM) -> dict[str, QuantGrid]:
    """name -> QuantGrid of every projection whose weights lie on their stored grid; raises
    for a grid the weights left (a later step moved them and nothing projected them back)."""
    out: dict[str, QuantGrid] = {}
    for name, _module in lm.linear_layers():
        state = lm.compression.get(name)
        grid = state.quant if state is not None else None
        if grid is None:
            continue
        if not grid.on_grid(lm.weight(name)):
            raise ExportError(
                f"{name}: its weights are no longer on the {grid.bits}-bit grid a quantizer stored "
                "(a later step changed them); rerun with --keep-compressed project so they are snapped back"
            )
        out[name] = grid
    return out


QUANTIZATION_FORMATS = ("auto", "pack-quantized", "int-quantized")


def pruned_layers(lm: LM) -> dict[str, torch.Tensor]:
    """name -> keep mask of every projection a pruner recorded; raises for a layer whose pruned
    weights are no longer zero (a later step moved them and nothing projected them back)."""
    out: dict[str, torch.Tensor] = {}
    for name, _module in lm.linear_layers():
        state = lm.compression.get(name)
        keep = state.keep_mask if state is not None else None
        if keep is None:
            continue
        w = lm.weight(name)
        if bool((w[~keep.to(w.device)] != 0).any()):
            raise ExportError(
                f"{name}: weights a pruner zeroed are no longer zero (a later step changed them); "
                "rerun with --keep-compressed project so they are zeroed again"
            )
        out[name] = keep
    return out


def sparsity_structure(lm: LM, masks: Mapping[str, torch.Tensor]) -> str:
    """``2:4`` when every pruned layer has at least two zeros in each run of four inputs, else
    ``unstructured`` (the structures compressed-tensors' sparsity config names)."""
    for name in masks:
        w = lm.weight(name)
        if w.shape[1] % 4:
            return "unstructured"
        if bool(((w == 0).reshape(w.shape[0], -1, 4).sum(-1) < 2).any()):
            return "unstructured"
    return "2:4"


def sparsity_config(lm: LM, masks: Mapping[str, torch.Tensor]) -> dict[str, object]:
    """compressed-tensors' sparsity config for ``masks`` (weights stored dense: every loader
    reads them; the config declares the structure for runtimes with sparse kernels)."""
    zeros = sum(int((lm.weight(n) == 0).sum()) for n in masks)
    total = sum(lm.weight(n).numel() for n in masks)
    return {
        "format": "dense",
        "targets": sorted(masks),
        "ignore": [],
        "global_sparsity": zeros / max(total, 1),
        "sparsity_structure": sparsity_structure(lm, masks),
    }


def export_compressed_tensors(
    lm: LM,
    out: str | Path,
    quantization_format: str = "auto",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write ``lm`` (unchanged) to ``out`` in compressed-tensors' format: quantized layers as
    integer codes with their scales (``pack-quantized``: b-bit codes packed into int32 words;
    ``int-quantized``: one int8 per code), pruned layers declared in a sparsity config. ``auto``
    packs when every grid is symmetric and writes int8 codes otherwise: the two layouts
    ``AutoModelForCausalLM.from_pretrained`` loads with no options (transformers 5.24 cannot
    load a packed asymmetric zero point: an explicit ``pack-quantized`` on such a grid is
    written with an :class:`ExportWarning`, through ``progress.note`` when given). Written
    beside ``out`` and renamed into place."""
    import torch

    if quantization_format not in QUANTIZATION_FORMATS:
        raise ExportError(
            f"quantization format {quantization_format!r} is not one of {', '.join(QUANTIZATION_FORMATS)}"
        )
    _require_compressed_tensors()
    from lmcompose.engine.saving import atomic_folder, check_save_folder

    target = check_save_folder(out, overwrite, flag="--out")
    grids = quantized_layers(lm)
    masks = pruned_layers(lm)
    if not grids and not masks:
        raise ExportError(
            "nothing to export: the model has no quantized or pruned layer (no rtn, gptq, awq, magnitude, "
            "sparsegpt or wanda step); save an edited dense model with `lmcompose run ... --save-model DIR`"
        )
    groups: dict[tuple[int, int | None, bool], list[str]] = {}
    for name, grid in grids.items():
        module = lm.model.get_submodule(name)
        if not isinstance(module, torch.nn.Linear):
            raise ExportError(
                f"{name}: {type(module).__name__} layers cannot be written as compressed-tensors (only nn.Linear)"
            )
        in_f = lm.weight(name).shape[1]
        # a group at least as wide as the layer is one group per row, which is the channel strategy
        # (compressed-tensors refuses a group strategy whose group is wider than the layer)
        g = grid.group_size if 0 < grid.group_size < in_f else None  # None: channel strategy
        if g is not None and in_f > g and in_f % g:
            raise ExportError(
                f"{name}: group size {g} does not divide its width {in_f}; compressed-tensors needs equal groups "
                "(quantize with a group size that divides every width, or <= 0 for one group per row)"
            )
        groups.setdefault((grid.bits, g, grid.symmetric), []).append(name)
    fmt = quantization_format
    if fmt == "auto":
        fmt = "pack-quantized" if all(sym for _b, _g, sym in groups) else "int-quantized"
    asymmetric = sorted(n for (_b, _g, sym), names in groups.items() if not sym for n in names)
    if fmt == "pack-quantized" and asymmetric:
        _warn(
            progress,
            f"--quantization-format pack-quantized: {len(asymmetric)} layer(s) have an asymmetric grid "
            f"({asymmetric[0]}, ...), and plain AutoModelForCausalLM.from_pretrained cannot load a packed "
            "asymmetric zero point (it reads it at the wrong size): load this checkpoint with "
            "quantization_config=CompressedTensorsConfig(dequantize=True), or export "
            "with --quantization-format int-quantized (what auto chooses here) for a checkpoint that loads as is",
        )
    if groups and fmt == "int-quantized" and any(b > 8 for b, _g, _s in groups):
        raise ExportError("int-quantized holds codes of at most 8 bits; use --quantization-format pack-quantized")

    with _quiet_compressed_tensors():
        model = _quantized_copy(lm, grids, groups) if groups else copy.deepcopy(lm.model)
        compressor = None
        if groups:
            from compressed_tensors.compressors import ModelCompressor

            compressor = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
            compressor.compress_model(model)
        with atomic_folder(target, "the checkpoint") as tmp:
            model.save_pretrained(tmp)
            if compressor is not None:
                compressor.update_config(str(tmp))
            lm.tokenizer.save_pretrained(tmp)
            _declare_sparsity(tmp / "config.json", sparsity_config(lm, masks) if masks else None)
    return target


def _quantized_copy(
    lm: LM, grids: dict[str, QuantGrid], groups: dict[tuple[int, int | None, bool], list[str]]
) -> PreTrainedModel:
    """A copy of the model with compressed-tensors' quantization config applied and each
    layer's scale and zero point set from its lmcompose grid (codes q − 2^(b−1))."""
    import torch
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )

    config_groups: dict[str, QuantizationScheme] = {}
    for k, ((bits, g, symmetric), names) in enumerate(
        sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[0][2]))
    ):
        args = QuantizationArgs(
            num_bits=bits, type="int", symmetric=symmetric, strategy="group" if g else "channel", group_size=g
        )
        config_groups[f"group_{k}"] = QuantizationScheme(targets=names, weights=args)
    config = QuantizationConfig(config_groups=config_groups, quantization_status=QuantizationStatus.FROZEN)
    model = copy.deepcopy(lm.model)
    apply_quantization_config(model, config, show_progress=False)
    with torch.no_grad():
        for name, grid in grids.items():
            module = model.get_submodule(name)
            # the parameters apply_quantization_config added to the layer
            weight_scale = cast(torch.Tensor, module.weight_scale)
            weight_zero_point = cast(torch.Tensor, module.weight_zero_point)
            half = 2 ** (grid.bits - 1)
            scale = grid.scale if weight_scale.shape[-1] != 1 or grid.scale.shape[-1] == 1 else grid.scale[:, :1]
            weight_scale.data = scale.to(cast(torch.Tensor, module.weight).dtype).reshape(weight_scale.shape).clone()
            zero = (grid.zero - half).round().to(torch.int8)
            weight_zero_point.data = zero.reshape(weight_scale.shape).to(weight_zero_point.dtype).clone()
    return model


def _declare_sparsity(config_path: Path, sparsity: Mapping[str, object] | None) -> None:
    """Put the sparsity config into config.json's quantization_config (creating a
    compressed-tensors config with no quantization groups for a pruned-only model)."""
    if sparsity is None:
        return
    import compressed_tensors

    data = json.loads(config_path.read_text(encoding="utf-8"))
    qc = data.get("quantization_config") or {
        "quant_method": "compressed-tensors",
        "format": "dense",
        "config_groups": {},
        "version": compressed_tensors.__version__,
    }
    qc["sparsity_config"] = sparsity
    data["quantization_config"] = qc
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@contextmanager
def _quiet_compressed_tensors() -> Iterator[None]:
    """compressed-tensors logs through loguru (a warning per layer when the format is given);
    lmcompose reports what matters itself."""
    try:
        from loguru import logger
    except ImportError:  # pragma: no cover - compressed-tensors depends on loguru
        yield
        return
    logger.disable("compressed_tensors")
    try:
        yield
    finally:
        logger.enable("compressed_tensors")


class _NoMetrics(Metric):
    """Replaying a run for export evaluates nothing."""

    name = "none"

    def compute(self, lm: LM, ctx: Context) -> dict[str, float | None]:
        return {}


def load_for_export(source: str | Path, progress: Progress | None = None, data_dir: str | Path | None = None) -> LM:
    """The model a run ended with, or a saved model folder.

    ``source`` is a folder written by ``LM.save``, ``--save-model`` or ``--save-cells``
    (weights + ``lmcompose_compression.json``),
    or the folder of a ``lmcompose run`` (``config.yaml``): runs keep results, not weights, so
    the run's steps are applied again to its model with its seed, dtype, edits and policy
    (calibration is seeded, so the result is the run's model). The base model's fingerprint
    must match the one the run recorded.
    """
    from lmcompose.compose import RunSettings, compose
    from lmcompose.engine.saving import PROVENANCE_FILE
    from lmcompose.models.handle import COMPRESSION_META
    from lmcompose.models.loading import load_model
    from lmcompose.results import read_yaml

    folder = Path(source)
    if (folder / "config.json").exists() and (
        (folder / COMPRESSION_META).exists() or (folder / PROVENANCE_FILE).exists()
    ):
        return load_model(str(folder))
    cfg = folder / "config.yaml"
    if not cfg.exists():
        raise ExportError(
            f"{folder}: neither a run folder (config.yaml) nor a saved model folder (config.json + {COMPRESSION_META})"
        )
    data = read_yaml(cfg)
    known = {f for f in RunSettings.__dataclass_fields__}
    if "vary" in data or "steps" not in data:
        raise ExportError(
            f"{folder} is not the folder of a single `lmcompose run` (a sweep?); "
            "export the cell you want by running it with `lmcompose run ... --out DIR` and exporting DIR"
        )
    settings = RunSettings.from_mapping({k: v for k, v in data.items() if k in known}, where=str(cfg))
    settings = settings.merged(data_dir=str(data_dir) if data_dir is not None else None)
    settings.validate()
    ctx = settings.context(progress or Progress())
    lm = settings.load_model(ctx.progress)
    recorded = data.get("model_fingerprint")
    if recorded and lm.fingerprint() != recorded:
        raise ExportError(
            f"{settings.model}: the model's weights differ from those run {folder} started from "
            f"(fingerprint {lm.fingerprint()} != {recorded}); the run cannot be replayed"
        )
    batches = settings.load_edits(ctx)
    edits = batches[0] if batches is not None else None
    compose(
        lm, settings.steps, edits=edits, policy=settings.policy, metrics=[_NoMetrics()], seed=settings.seed, ctx=ctx
    )
    return lm


def export(
    source: str | Path,
    out: str | Path,
    fmt: str = "compressed-tensors",
    progress: Progress | None = None,
    *,
    quantization_format: str = "auto",
    overwrite: bool = False,
    data_dir: str | Path | None = None,
) -> Path:
    """Write the model of run (or saved model folder) ``source`` to ``out`` in format ``fmt``
    (a run is replayed with its recorded data folder, or ``data_dir`` when given)."""
    if fmt not in FORMATS:
        raise ExportError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    if quantization_format not in QUANTIZATION_FORMATS:
        raise ExportError(
            f"--quantization-format {quantization_format!r} is not one of {', '.join(QUANTIZATION_FORMATS)}"
        )
    _require_compressed_tensors()
    from lmcompose.engine.saving import check_apart_from_run, check_save_folder

    # before the run is replayed; a folder inside RUN is fine (the CLI's default is RUN/export-FORMAT)
    if (Path(source) / "config.yaml").is_file():
        label, holds = f"the run folder {source} (RUN, the run exported)", "config.yaml and results.jsonl"
    else:
        label, holds = f"the model folder {source} (RUN, the model exported)", "weights"
    check_apart_from_run(out, source, "--out", label, holds, inside_ok=True)
    check_save_folder(out, overwrite, flag="--out")
    lm = load_for_export(source, progress, data_dir)
    return export_compressed_tensors(lm, out, quantization_format, overwrite=overwrite, progress=progress)
