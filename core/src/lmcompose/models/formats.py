"""The storage format of a base checkpoint, as rows and reports record it (``base_format``).

Everything lmcompose measures starts from the base model, and "dense" there means the weights
as loaded: a named model is a 4-bit GGUF file dequantized to float32, so its "dense" weights
already lie near a 4-bit grid. The label says which:

* ``gguf:<TYPE>`` — a GGUF file: its ``general.file_type`` (``gguf:Q4_1``, ``gguf:Q4_K_M``,
  ``gguf:F16``, ``gguf:F32``), or, when the file does not declare one, the tensor type that
  holds most of its weights;
* ``safetensors:<dtype>`` — a folder's safetensors files: the dtype holding most of the
  elements (``fp32``, ``bf16``, ``fp16``), or ``safetensors:<quant_method>`` when config.json
  declares a ``quantization_config`` (``safetensors:compressed-tensors``);
* ``pytorch:<dtype>`` — a folder of ``pytorch_model*.bin`` files: the dtype its config.json
  declares (the pickles are not opened), ``unknown`` without one;
* ``hub:…`` — a hub model: its cached snapshot read as a folder (``hub:safetensors:bf16``);
* ``memory:<dtype>`` — a model built in memory (the tiny test models): no checkpoint.

Only file headers are read (GGUF metadata and tensor table, safetensors JSON headers), so a
label costs milliseconds, not a load. :func:`gguf_tensor_types` also gives the GGUF tensor
types per element count and the bits per weight each stores (block size and bytes from
``gguf.GGML_QUANT_SIZES``), which docs/models.md tabulates for the named models.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from torch.nn import Module

__all__ = [
    "GGUFTensorTypes",
    "folder_format",
    "gguf_format",
    "gguf_tensor_types",
    "hub_format",
    "is_quantized_format",
    "memory_format",
]

#: safetensors dtype codes (and torch dtype names) as a label spells them
DTYPE_LABELS = {
    "F64": "fp64",
    "F32": "fp32",
    "F16": "fp16",
    "BF16": "bf16",
    "float64": "fp64",
    "float32": "fp32",
    "float16": "fp16",
    "bfloat16": "bf16",
}
FULL_PRECISION = frozenset({"fp64", "fp32", "fp16", "bf16", "F64", "F32", "F16", "BF16"})
#: GGUF tensor names of the decoder projections (what avg_bits counts over)
GGUF_PROJECTIONS = ("attn_q.", "attn_k.", "attn_v.", "attn_qkv.", "attn_output.", "ffn_gate.", "ffn_up.", "ffn_down.")
_COMPRESSION_FILE = "lmcompose_compression.safetensors"  # the sidecar of LM.save, not weights

# GGUF value types (gguf.GGUFValueType): scalar struct formats; 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
#: a GGUF header value as :meth:`_Header.value` reads it (None: an array it stepped over)
GGUFValue = Union[int, float, bool, str, list["GGUFValue"], None]


class _Header:
    """A cursor over a GGUF file's header (little-endian, version 2 or 3)."""

    def __init__(self, buf: bytes | mmap.mmap) -> None:
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str) -> int | float | bool:
        """The scalar of struct format ``fmt`` at the cursor."""
        value: int | float | bool = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def take(self, fmt: str) -> int:
        """The integer of struct format ``fmt`` (an integer code: ``<I``, ``<Q``) at the cursor."""
        value: int = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        text = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return text

    def value(self, kind: int, keep: bool) -> GGUFValue:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            inner, count = self.take("<I"), self.take("<Q")
            if inner in _SCALARS and not keep:  # skip fixed-size arrays without reading them
                self.pos += count * struct.calcsize(_SCALARS[inner])
                return None
            if inner == _STRING and not keep:  # a vocabulary: step over each string's bytes
                buf, pos = self.buf, self.pos
                for _ in range(count):
                    pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
                self.pos = pos
                return None
            items: list[GGUFValue] = [self.value(inner, keep) for _ in range(count)]
            return items if keep else None
        raise ValueError(f"unknown GGUF value type {kind}")


@dataclass(frozen=True)
class GGUFTensorTypes:
    """A GGUF file's declared file type and its tensors' types (elements per type, over all
    tensors and over the decoder projections)."""

    file_type: str | None
    elements: Mapping[str, int]
    projections: Mapping[str, int]

    @property
    def dominant(self) -> str | None:
        return max(self.elements, key=lambda k: self.elements[k]) if self.elements else None

    def projection_bits(self) -> float | None:
        """Bits per weight the file stores its decoder projections in (block bytes × 8 / block
        size of each type, weighted by elements), None without projections."""
        import gguf

        total = sum(self.projections.values())
        if not total:
            return None
        bits = 0.0
        for name, n in self.projections.items():
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
            bits += n * size * 8 / block
        return bits / total


def gguf_tensor_types(path: str | Path) -> GGUFTensorTypes:
    """The file type and tensor types of the GGUF file ``path``, from its header alone."""
    import gguf

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        h = _Header(buf)
        if bytes(buf[:4]) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic)")
        h.pos = 4
        version = h.take("<I")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} is not read here (2 and 3 are)")
        n_tensors, n_fields = h.take("<Q"), h.take("<Q")
        file_type: int | None = None
        for _ in range(n_fields):
            key = h.string()
            value = h.value(h.take("<I"), keep=False)
            if key == "general.file_type":
                if not isinstance(value, int | float | str):
                    raise ValueError(f"{path}: general.file_type is not a number ({value!r})")
                file_type = int(value)
        elements: Counter[str] = Counter()
        projections: Counter[str] = Counter()
        for _ in range(n_tensors):
            name = h.string()
            dims = [h.take("<Q") for _ in range(h.take("<I"))]
            kind, _offset = h.take("<I"), h.take("<Q")
            try:
                type_name = gguf.GGMLQuantizationType(kind).name
            except ValueError:
                type_name = f"type{kind}"
            n = 1
            for d in dims:
                n *= d
            elements[type_name] += n
            if name.startswith("blk.") and any(p in name for p in GGUF_PROJECTIONS):
                projections[type_name] += n
    label = None
    if file_type is not None:
        try:
            declared = gguf.LlamaFileType(file_type).name
        except ValueError:
            declared = None
        if declared is not None and declared != "GUESSED":
            label = declared.removeprefix("MOSTLY_").removeprefix("ALL_")
    return GGUFTensorTypes(label, dict(elements), dict(projections))


def gguf_format(path: str | Path) -> str:
    """``gguf:<TYPE>`` of the GGUF file ``path`` (:mod:`the module docstring <lmcompose.models.formats>`)."""
    types = gguf_tensor_types(path)
    return f"gguf:{types.file_type or types.dominant or 'empty'}"


def _safetensors_elements(path: Path) -> Counter[str]:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    out: Counter[str] = Counter()
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for d in entry.get("shape", []):
            n *= d
        out[entry["dtype"]] += n
    return out


def _dtype_label(name: str) -> str:
    return DTYPE_LABELS.get(name, name.lower())


def folder_format(folder: str | Path) -> str:
    """The storage format of a checkpoint folder (safetensors or pytorch .bin; see the module
    docstring)."""
    from lmcompose.models.loading import checkpoint_dtype

    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        config = {}
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    files = sorted(p for p in folder.glob("*.safetensors") if p.name != _COMPRESSION_FILE)
    container = "safetensors" if files else "pytorch" if any(folder.glob("pytorch_model*.bin")) else "unknown"
    if isinstance(quant, dict) and quant.get("quant_method"):
        return f"{container}:{quant['quant_method']}"
    if files:
        elements: Counter[str] = Counter()
        for p in files:
            elements += _safetensors_elements(p)
        if elements:
            return f"safetensors:{_dtype_label(max(elements, key=lambda k: elements[k]))}"
    declared = checkpoint_dtype(folder)
    return f"{container}:{_dtype_label(declared) if declared else 'unknown'}"


def hub_format(repo: str, revision: str | None = None) -> str:
    """``hub:<folder format>`` of a hub model's cached snapshot (``hub`` alone when no snapshot
    is cached: nothing is downloaded to find out)."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, or an old huggingface_hub: the label says less
        return "hub"
    return f"hub:{folder_format(folder)}"


def memory_format(model: Module) -> str:
    """``memory:<dtype>`` of a model built in memory: the dtype holding most of its parameters."""
    counts: Counter[str] = Counter()
    for p in model.parameters():
        counts[str(p.dtype).removeprefix("torch.")] += p.numel()
    return f"memory:{_dtype_label(max(counts, key=lambda k: counts[k])) if counts else 'empty'}"


def is_quantized_format(label: str | None) -> bool:
    """Whether a ``base_format`` label names a quantized checkpoint (a GGUF type or a
    declared quantization method other than a float dtype)."""
    if not label:
        return False
    kind = label.rsplit(":", 1)[-1]
    if label.startswith("gguf:"):
        return kind not in FULL_PRECISION
    return ":" in label and kind not in FULL_PRECISION and kind != "unknown" and not label.startswith("memory:")
