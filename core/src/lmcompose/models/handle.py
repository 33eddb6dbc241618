"""The LM handle: a model, its tokenizer, its architecture spec and its compression state."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import torch

from lmcompose.models.arch import ArchSpec, linear_modules, weight_matrix
from lmcompose.quant import QuantGrid

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

COMPRESSION_FILE = "lmcompose_compression.safetensors"
COMPRESSION_META = "lmcompose_compression.json"


class QuantMeta(TypedDict):
    """A quantized layer's grid settings in ``lmcompose_compression.json``."""

    bits: int
    group_size: int
    symmetric: bool


class CompressionMetaEntry(TypedDict, total=False):
    """One layer's entry in ``lmcompose_compression.json`` (its tensors are in the safetensors file)."""

    keep_mask: bool
    quant: QuantMeta


@dataclass
class LayerCompression:
    """What compressors recorded for one weight matrix.

    ``keep_mask``: bool (out, in), False where a pruner zeroed the weight (the union of all
    pruning steps). ``quant``: the grid the weights were last quantized onto.
    """

    keep_mask: torch.Tensor | None = None
    quant: QuantGrid | None = None

    def clone(self) -> LayerCompression:
        """A copy that shares no tensor with this one (a snapshot a later step cannot change)."""
        quant = self.quant
        return LayerCompression(
            None if self.keep_mask is None else self.keep_mask.clone(),
            None
            if quant is None
            else QuantGrid(quant.bits, quant.group_size, quant.symmetric, quant.scale.clone(), quant.zero.clone()),
        )


class ModelSnapshot(TypedDict):
    """An in-memory snapshot of an LM (:meth:`LM.state_copy`, :meth:`LM.restore`)."""

    weights: dict[str, torch.Tensor]
    compression: dict[str, LayerCompression]


@dataclass
class LM:
    """A causal LM with its tokenizer and architecture spec."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    arch: ArchSpec
    name: str = "model"
    source: str = ""
    compression: dict[str, LayerCompression] = field(default_factory=dict)
    revision: str | None = None  # the hub commit a hub model resolved to
    #: the base checkpoint's storage format (``gguf:Q4_1``, ``safetensors:bf16``; set by
    #: load_model, :mod:`lmcompose.models.formats`); None for a model built in memory
    base_format: str | None = None

    def checkpoint_format(self) -> str:
        """``base_format``, or ``memory:<dtype>`` for a model built in memory (what rows record)."""
        if self.base_format:
            return self.base_format
        from lmcompose.models.formats import memory_format

        return memory_format(self.model)

    @property
    def device(self) -> torch.device:
        """Where the model computes (an offloaded model's execution device)."""
        p = next(self.model.parameters())
        if p.device.type != "meta":
            return p.device
        from lmcompose.models.offload import execution_device

        return execution_device(self.model)

    @property
    def offloaded(self) -> bool:
        """Whether accelerate offloaded some of the weights (``--device-map`` with ``--max-memory``)."""
        from lmcompose.models.offload import is_offloaded

        return is_offloaded(self.model)

    def onloaded(self, *targets: str | torch.nn.Module, write: bool = True) -> AbstractContextManager[None]:
        """A context in which the named modules (or modules) hold real weights even when
        offloaded; with ``write`` their changes are stored back on exit. A no-op for a
        model that is not offloaded (:mod:`lmcompose.models.offload`)."""
        from contextlib import nullcontext

        from lmcompose.models.offload import onloaded

        if not self.offloaded:
            return nullcontext()
        mods = [self.model.get_submodule(t) if isinstance(t, str) else t for t in targets]
        return onloaded(mods or [self.model], write=write)

    @property
    def max_positions(self) -> int:
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            v = getattr(cfg, key, None)
            if isinstance(v, int) and v > 0:
                return v
        return 2048

    def linear_layers(self) -> list[tuple[str, torch.nn.Module]]:
        """(name, module) of the decoder's projections, the default target of compressors."""
        return linear_modules(self.model, self.arch)

    def target_layers(
        self, targets: Sequence[str] = (), ignore: Sequence[str] = ()
    ) -> list[tuple[str, torch.nn.Module]]:
        """Decoder projections selected by name patterns.

        A pattern matches a layer whose qualified name equals it, ends with ``.pattern``
        (``mlp.down_proj``), or matches it as a glob (``model.layers.1*``). Empty ``targets``
        means every decoder projection; embeddings and the LM head are never included.
        """

        def hit(name: str, pats: Sequence[str]) -> bool:
            return any(name == p or name.endswith("." + p) or fnmatch.fnmatchcase(name, p) for p in pats)

        layers = [(n, m) for n, m in self.linear_layers() if (not targets or hit(n, targets)) and not hit(n, ignore)]
        return layers

    def weight(self, name: str) -> torch.Tensor:
        """The (out, in) weight matrix of a named projection, as a view into the model. An
        offloaded layer's weight exists only inside ``with lm.onloaded(name):``."""
        w = weight_matrix(self.model.get_submodule(name))
        if w.device.type == "meta":
            from lmcompose.models.offload import OffloadError

            raise OffloadError(
                f"{name} is offloaded (its weights are on disk or CPU, not loaded): the code that reads it "
                "must hold `with lm.onloaded(name):`; this step does not support offloaded models yet"
            )
        return w

    def layer_state(self, name: str) -> LayerCompression:
        return self.compression.setdefault(name, LayerCompression())

    def record_keep_mask(self, name: str, keep: torch.Tensor) -> None:
        """Record a pruner's keep mask for ``name``: ANDed with earlier pruners' masks."""
        state = self.layer_state(name)
        state.keep_mask = keep if state.keep_mask is None else state.keep_mask & keep

    def rezero(self, masks: dict[str, torch.Tensor]) -> None:
        """Zero every weight whose keep mask is False (a pruner's project())."""
        for name, keep in masks.items():
            with self.onloaded(name):
                w = self.weight(name)
                w.mul_(keep.to(device=w.device, dtype=w.dtype))

    def nonfinite_count(self) -> int:
        """How many parameter values are NaN or infinite (0 for a healthy model)."""
        with torch.no_grad():
            return int(
                sum(int((~torch.isfinite(p)).sum()) for p in self._parameters().values() if p.is_floating_point())
            )

    def _parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter by name (a tied one once), an offloaded one read from accelerate's store."""
        params: dict[str, torch.Tensor] = dict(self.model.named_parameters())
        if self.offloaded:
            from lmcompose.models.offload import stored_tensors

            stored = stored_tensors(self.model)
            params = {k: stored[k] for k in params}
        return params

    def fingerprint(self) -> str:
        """blake2b over every parameter and buffer's bytes (names sorted, tied weights once)."""
        h = hashlib.blake2b(digest_size=16)
        seen: set[int] = set()
        for name, tensor in sorted(self._parameters().items()):
            ptr = tensor.data_ptr()
            if ptr in seen:
                continue
            seen.add(ptr)
            h.update(name.encode())
            t = tensor.detach().cpu().contiguous()
            h.update(str(t.dtype).encode())
            h.update(t.view(torch.uint8).numpy() if t.numel() else b"")  # type: ignore[arg-type]  # ndarray is a buffer
        return h.hexdigest()

    def state_copy(self) -> ModelSnapshot:
        """An in-memory snapshot of weights (in CPU memory) and compression state (see restore)."""
        if self.offloaded:
            from lmcompose.models.offload import stored_tensors

            weights = {k: v.detach().clone() for k, v in stored_tensors(self.model).items()}
        else:
            # on the CPU whatever the model's device: a GPU holds the model, not its snapshots
            weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return {"weights": weights, "compression": {k: v.clone() for k, v in self.compression.items()}}

    def restore(self, snapshot: ModelSnapshot) -> None:
        if self.offloaded:
            from lmcompose.models.offload import restore_tensors

            restore_tensors(self.model, snapshot["weights"])
        else:
            self.model.load_state_dict(snapshot["weights"])
        self.compression = {k: LayerCompression(v.keep_mask, v.quant) for k, v in snapshot["compression"].items()}

    def save(self, path: str | Path) -> Path:
        """Save model + tokenizer (safetensors) and the compression state beside them."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.offloaded:
            from lmcompose.models.offload import stored_tensors

            self.model.save_pretrained(
                path, state_dict={k: v.contiguous() for k, v in stored_tensors(self.model).items()}
            )
        else:
            self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        save_compression(self.compression, path)
        from lmcompose.results import follow_umask

        for weights in path.glob("*.safetensors"):  # safetensors writes 0600 whatever the umask
            follow_umask(weights)
        return path


def save_compression(compression: dict[str, LayerCompression], folder: Path) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, CompressionMetaEntry] = {}
    for name, st in compression.items():
        entry: CompressionMetaEntry = {}
        if st.keep_mask is not None:
            tensors[f"{name}.keep_mask"] = st.keep_mask.to(torch.uint8).contiguous()
            entry["keep_mask"] = True
        if st.quant is not None:
            tensors[f"{name}.scale"] = st.quant.scale.contiguous()
            tensors[f"{name}.zero"] = st.quant.zero.contiguous()
            entry["quant"] = {"bits": st.quant.bits, "group_size": st.quant.group_size, "symmetric": st.quant.symmetric}
        meta[name] = entry
    if not meta:
        return
    save_file(tensors, str(folder / COMPRESSION_FILE))
    (folder / COMPRESSION_META).write_text(json.dumps(meta, indent=1))


def load_compression(folder: Path) -> dict[str, LayerCompression]:
    meta_path = folder / COMPRESSION_META
    if not meta_path.exists():
        return {}
    from safetensors.torch import load_file

    meta = json.loads(meta_path.read_text())
    tensors = load_file(str(folder / COMPRESSION_FILE))
    out = {}
    for name, entry in meta.items():
        st = LayerCompression()
        if entry.get("keep_mask"):
            st.keep_mask = tensors[f"{name}.keep_mask"].bool()
        if "quant" in entry:
            q = entry["quant"]
            st.quant = QuantGrid(
                q["bits"], q["group_size"], q["symmetric"], tensors[f"{name}.scale"], tensors[f"{name}.zero"]
            )
        out[name] = st
    return out
