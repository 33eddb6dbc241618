"""Which text perplexity and calibration read: ``--ppl-corpus`` and ``--calibration-corpus``.

A corpus spec is one of

* ``wikitext2`` — wikitext-2 raw: the test split for perplexity, train + validation for
  calibration, from the data folder (``LMCOMPOSE_DATA_DIR``), else the hub;
* a path to a UTF-8 text file — the whole file, for either role;
* ``hub:ID`` with optional ``?config=NAME&split=SPLIT&field=COLUMN&rows=N&data_files=PATH`` —
  a Hugging Face ``datasets`` dataset, rows of ``field`` (default ``text``) joined by blank
  lines; split defaults to ``test`` for perplexity and ``train`` for calibration; ``rows``
  keeps the first N rows, ``data_files`` reads only those files of the repository (C4 as the
  GPTQ code reads it: ``hub:allenai/c4?data_files=en/c4-train.00000-of-01024.json.gz``).
  ``datasets`` caches it; offline, an uncached id is an error. A local folder in
  ``datasets``' layout is read the same way (``hub:/data/my-corpus``);
* ``sample`` — the small text bundled with lmcompose (for smoke tests only).

Left unset, both roles read wikitext-2 and, when it cannot be had, the bundled sample with a
note in every row. A corpus that was asked for and cannot be had is one DataError naming it
and the fix: never the bundled sample in its place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from lmcompose.data.files import check_text_file, read_text_file, sample_text, sha256_file
from lmcompose.data.wikitext import wikitext_file, wikitext_text
from lmcompose.errors import ConfigError, DataError, describe_value
from lmcompose.paths import offline, source_path

if TYPE_CHECKING:
    from datasets import Dataset

    from lmcompose.api import Context

__all__ = [
    "ROLES",
    "CorpusSpec",
    "check_corpora",
    "check_corpus_files",
    "check_hub_folder",
    "context_corpus_identity",
    "corpus_identity",
    "corpus_text",
    "load_corpus",
    "longer_text_advice",
    "parse_corpus",
    "read_text_file",
]

#: role -> (the setting that names its corpus, the wikitext-2 splits it reads, the hub split by default)
ROLES = {
    "test": ("ppl_corpus", ("test",), "test"),
    "calibration": ("calibration_corpus", ("train", "validation"), "train"),
}
HUB_OPTIONS = ("config", "split", "field", "rows", "data_files")


@dataclass(frozen=True)
class CorpusSpec:
    """A parsed corpus spec; ``explicit`` is False for the default (unset) one."""

    kind: str  # wikitext2 | file | hub | sample
    name: str = ""  # file path or hub id
    config: str | None = None
    split: str | None = None
    field: str = "text"
    explicit: bool = True
    rows: int | None = None  # the first N rows of the split
    data_files: str | None = None  # files of the dataset's repository to read (as datasets' data_files)

    def __str__(self) -> str:
        if self.kind in {"wikitext2", "sample"}:
            return self.kind
        if self.kind == "file":
            return self.name
        opts = "&".join(
            f"{k}={v}"
            for k, v in (
                ("config", self.config),
                ("split", self.split),
                ("field", self.field),
                ("rows", self.rows),
                ("data_files", self.data_files),
            )
            if v is not None and not (k == "field" and v == "text")
        )
        return f"hub:{self.name}" + (f"?{opts}" if opts else "")


def parse_corpus(value: object, key: str = "corpus") -> CorpusSpec:
    """``value`` (a spec string, or None for the default) as a CorpusSpec; checks its shape
    only (no file is read, nothing is downloaded)."""
    if value is None:
        return CorpusSpec("wikitext2", explicit=False)
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise ConfigError(
            f"{key}: expected wikitext2, a text file's path, hub:ID[?config=..&split=..&field=..] or sample; "
            f"got {describe_value(value)}"
        )
    text = value.strip()
    if text in {"wikitext2", "wikitext-2", "wikitext"}:
        return CorpusSpec("wikitext2")
    if text == "sample":
        return CorpusSpec("sample")
    if text.startswith("hub:"):
        ident, _q, query = text[4:].partition("?")
        if not ident:
            raise ConfigError(
                f"{key} {value!r}: name the dataset after hub:, e.g. hub:allenai/c4?config=en&split=validation"
            )
        opts = dict(parse_qsl(query, keep_blank_values=True))
        unknown = sorted(set(opts) - set(HUB_OPTIONS))
        if unknown:
            raise ConfigError(
                f"{key} {value!r}: unknown option {unknown[0]!r}; a hub corpus takes {', '.join(HUB_OPTIONS)}"
            )
        if any(not v for v in opts.values()):
            raise ConfigError(f"{key} {value!r}: an option has no value (write config=NAME, split=SPLIT, field=COLUMN)")
        rows = opts.get("rows")
        if rows is not None and (not rows.isdigit() or int(rows) < 1):
            raise ConfigError(
                f"{key} {value!r}: rows={rows} is not a whole number >= 1 (the first N rows of the split)"
            )
        return CorpusSpec(
            "hub",
            ident,
            opts.get("config"),
            opts.get("split"),
            opts.get("field", "text"),
            rows=int(rows) if rows else None,
            data_files=opts.get("data_files"),
        )
    if text.startswith(("http://", "https://")):
        raise ConfigError(
            f"{key} {value!r}: a corpus is read from this machine, not downloaded; download the file and give "
            "its path, or name a Hugging Face dataset as hub:ID (URLs are for edit datasets' --dataset-source)"
        )
    return CorpusSpec("file", str(source_path(text)))


def _hub_local_path(spec: CorpusSpec) -> Path | None:
    """The local folder a ``hub:`` spec names (``hub:/data/corpus``, ``hub:./corpus``,
    ``hub:~/corpus``, or an id that is a folder here), else None (a hub id)."""
    path = Path(spec.name).expanduser()
    return path if spec.name.startswith(("/", ".", "~")) or path.is_dir() else None


def check_hub_folder(spec: CorpusSpec, what: str) -> None:
    """A ``hub:`` spec that names a local path must be a folder (in ``datasets``' layout):
    a path that does not exist, or a file, is one DataError, not a question to the hub."""
    path = _hub_local_path(spec)
    if path is None:
        return
    if not path.exists():
        raise DataError(
            f"{what}: folder {path} does not exist (hub:PATH reads a local folder in the datasets library's "
            "layout); check the path, or give a hub id such as hub:wikitext?config=wikitext-2-raw-v1"
        )
    if not path.is_dir():
        raise DataError(
            f"{what}: {path} is a file, and hub: reads a dataset id or a folder; for a file, give its path without hub:"
        )


def load_hub_dataset(spec: CorpusSpec, split: str, what: str) -> Dataset:
    """``datasets.load_dataset(spec.name, spec.config, split=split)``; anything that goes wrong
    (no such id, offline and not cached, a broken dataset) is one DataError naming ``what``."""
    check_hub_folder(spec, what)
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency of lmcompose
        raise DataError(f"{what}: reading a hub dataset needs the datasets package: pip install datasets") from None
    datasets.disable_progress_bars()
    files = {"data_files": {split: spec.data_files}} if spec.data_files else {}
    try:
        return datasets.load_dataset(
            spec.name, spec.config, split=split + (f"[:{spec.rows}]" if spec.rows else ""), **files
        )
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds for a missing, offline or broken dataset
        if _hub_local_path(spec) is not None:
            hint = "the folder is not a dataset the datasets library reads; check its files, config and split"
        elif offline():
            hint = (
                "this machine is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and the dataset is not in the datasets "
                "cache: run once with network to cache it, or pass a local file"
            )
        else:
            hint = "check the id, config and split (or the network)"
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise DataError(f"{what}: cannot be loaded ({type(exc).__name__}: {first}); {hint}") from None


_HUB_TEXT: dict[tuple[str, str], tuple[str, str]] = {}


def _hub_text(spec: CorpusSpec, role: str, what: str) -> tuple[str, str]:
    """A hub corpus's text, loaded and joined once per process (every calibrated step and the
    check before a run asks for it)."""
    key = (str(spec), role)
    if key not in _HUB_TEXT:
        _HUB_TEXT[key] = _load_hub_text(spec, role, what)
    return _HUB_TEXT[key]


def _load_hub_text(spec: CorpusSpec, role: str, what: str) -> tuple[str, str]:
    split = spec.split or ROLES[role][2]
    ds = load_hub_dataset(spec, split, f"{what} {spec}")
    if spec.field not in ds.column_names:
        raise DataError(
            f"{what} {spec}: split {split!r} has no column {spec.field!r} (columns: {', '.join(ds.column_names)}); "
            "name the text column with field="
        )
    rows = [r for r in ds[spec.field] if isinstance(r, str)]
    text = "\n\n".join(rows)
    if not text.strip():
        raise DataError(f"{what} {spec}: split {split!r} has no text in column {spec.field!r}")
    fingerprint = getattr(ds, "_fingerprint", "")
    return text, f"hub:{spec.name}" + (f"/{spec.config}" if spec.config else "") + f"/{split}" + (
        f"@{fingerprint}" if fingerprint else ""
    )


def load_corpus(spec: CorpusSpec, role: str, ctx: Context | None = None) -> tuple[str, str]:
    """The text of ``spec`` for ``role`` (``test``: perplexity, ``calibration``) and where it
    came from. wikitext-2 is looked for in ``ctx.data_dir`` (else LMCOMPOSE_DATA_DIR)."""
    what = "perplexity corpus" if role == "test" else "calibration corpus"
    if spec.kind == "sample":
        return sample_text(), "bundled:sample_text.txt"
    if spec.kind == "file":
        return read_text_file(spec.name, what), f"file:{Path(spec.name).resolve()}"
    if spec.kind == "hub":
        return _hub_text(spec, role, what)
    splits = ROLES[role][1]
    problems: list[str] = []
    found = [wikitext_text(s, problems=problems, folder=getattr(ctx, "data_dir", None)) for s in splits]
    if role == "calibration":
        got = [f for f in found if f is not None]
        if got:
            return "\n\n".join(t for t, _ in got), " + ".join(w for _, w in got)
    elif found[0] is not None:
        return found[0]
    why = f" (the hub: {problems[0]})" if problems else ""
    if spec.explicit:
        raise DataError(
            f"{what} wikitext2: the {' and '.join(splits)} split(s) are not in the data folder{why}; "
            "set LMCOMPOSE_DATA_DIR (or --data-dir) to a folder with wikitext-2-raw/, or name another corpus"
        )
    if ctx is not None:
        ctx.note(
            f"wikitext-2 {'test' if role == 'test' else 'calibration'} text not found{why}: using the small bundled "
            "sample text instead (set LMCOMPOSE_DATA_DIR or --data-dir to a folder with wikitext-2-raw/, or pass "
            f"--{'ppl' if role == 'test' else 'calibration'}-corpus, for real numbers)"
        )
    return sample_text(), "bundled:sample_text.txt"


def longer_text_advice(where: str) -> str:
    """What to do about a corpus too short for its role, by where its text came from (``where``
    as :func:`load_corpus` returns it): a longer file, a larger split, or the real wikitext-2."""
    if where.startswith("file:"):
        return f"{where.removeprefix('file:')} is the whole text read; give a longer text file, or name another corpus"
    if where.startswith("hub:"):
        return "choose a split (split=) or a dataset with more text, or drop rows= if it is set"
    return (
        "point LMCOMPOSE_DATA_DIR (or --data-dir) at a folder with the real wikitext-2 splits, or name another corpus"
    )


def check_corpus_files(ppl: object, calibration: object) -> None:
    """That each corpus asked for as a file is one, and each ``hub:`` folder is one, without
    reading them or importing anything heavy (what `validate` checks; a run reads them all
    with :func:`check_corpora`)."""
    for role, value, key in (("test", ppl, "ppl_corpus"), ("calibration", calibration, "calibration_corpus")):
        if value is None:
            continue
        spec = parse_corpus(value, key)
        what = "perplexity corpus" if role == "test" else "calibration corpus"
        if spec.kind == "file":
            check_text_file(Path(spec.name), what)
        elif spec.kind == "hub":
            check_hub_folder(spec, f"{what} {spec}")


def check_corpora(ppl: object, calibration: object, ctx: Context | None = None) -> None:
    """Load each corpus that was asked for (not the default) once, so a missing file, a binary
    one or an uncached hub id stops the command before anything is written (wikitext-2 in
    ``ctx.data_dir`` when given)."""
    for role, value, key in (("test", ppl, "ppl_corpus"), ("calibration", calibration, "calibration_corpus")):
        if value is not None:
            load_corpus(parse_corpus(value, key), role, ctx)


def corpus_identity(
    ppl: CorpusSpec | None = None, calibration: CorpusSpec | None = None, folder: str | Path | None = None
) -> dict[str, str]:
    """Which text each role reads, by name and checksum where it is a file (nothing is
    tokenized or downloaded; wikitext-2 in the data folder ``folder``, else LMCOMPOSE_DATA_DIR):
    a run records it, and a resume onto other text is refused."""
    out = {}
    for role, spec in (
        ("test", ppl or CorpusSpec("wikitext2", explicit=False)),
        ("calibration", calibration or CorpusSpec("wikitext2", explicit=False)),
    ):
        if spec.kind == "wikitext2":
            files = [f for f in (wikitext_file(p, folder=folder) for p in ROLES[role][1]) if f is not None]
            out[role] = (
                " + ".join(f"{f.name}:{sha256_file(f)[:16]}" for f in files) if files else "bundled:sample_text.txt"
            )
        elif spec.kind == "file" and Path(spec.name).is_file():
            out[role] = f"{spec.name}:{sha256_file(Path(spec.name))[:16]}"
        else:
            out[role] = str(spec) if spec.kind != "sample" else "bundled:sample_text.txt"
    return out


def context_corpus_identity(ctx: Context | None = None) -> dict[str, str]:
    """Which text perplexity (``test``) and calibration read, by file name and checksum, as
    :func:`corpus_text` would choose it for ``ctx``'s corpus settings (nothing is tokenized):
    a run records it, and a resume onto other text is refused (``lmcompose.data.corpus_identity``)."""
    return corpus_identity(
        parse_corpus(getattr(ctx, "ppl_corpus", None), "ppl_corpus"),
        parse_corpus(getattr(ctx, "calibration_corpus", None), "calibration_corpus"),
        getattr(ctx, "data_dir", None),
    )


def corpus_text(split: str, ctx: Context | None = None) -> tuple[str, str]:
    """Text for perplexity (``test``) or calibration (``calibration``): the corpus ``ctx``
    names (``ctx.ppl_corpus`` / ``ctx.calibration_corpus``), by default wikitext-2 or, when it
    cannot be had, the bundled sample with a note."""
    if split not in ROLES:
        raise DataError(f"corpus role {split!r} is not one of {', '.join(ROLES)}")
    key = ROLES[split][0]
    return load_corpus(parse_corpus(getattr(ctx, key, None), key), split, ctx)
