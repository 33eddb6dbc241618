"""Edit records from files: the shared machinery of edit-dataset plugins (source resolution:
explicit file, URL or hub id, the data folder, the download cache, a download, the bundled
sample), per-record validation with errors naming file, record and field, ``skip_invalid``,
and seeded, disjoint replicate selection.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

from lmcompose._limits import MAX_NESTING
from lmcompose.api import EditDataset, EditRecord, LocalityPrompt
from lmcompose.data.corpora import check_hub_folder, load_hub_dataset, parse_corpus
from lmcompose.data.download import download_cache_path, fetch, split_checksum
from lmcompose.data.files import local_source_file
from lmcompose.errors import DataError, UsageError, describe_value
from lmcompose.paths import cache_dir, data_dir, offline
from lmcompose.results import nesting_depth, too_deep

T = TypeVar("T")

__all__ = [
    "JsonEditDataset",
    "fill_template",
    "need_list",
    "need_str",
    "parse_easyedit_flat",
    "read_json_records",
    "select_records",
]


def select_records(
    records: list[T], limit: int | None, seed: int | None, replicate: int = 0, dataset: str | None = None
) -> list[T]:
    """Replicate ``replicate`` of size ``limit`` from a seeded permutation: replicate k never
    overlaps replicate j. ``seed=None`` keeps file order. ``dataset``: how a refusal names
    the records (e.g. ``counterfact (data/cf.json)``)."""
    where = f"{dataset}: " if dataset else ""
    order = list(range(len(records)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    if limit is None:
        if replicate:
            raise UsageError(f"{where}replicates need a limit (the batch size)")
        return [records[i] for i in order]
    if limit < 1:
        raise UsageError(f"{where}limit={limit}: ask for at least one record")
    start = replicate * limit
    if start + limit > len(records):
        raise UsageError(
            f"{where}replicate {replicate} of {limit} records needs {start + limit} records; the dataset has "
            f"{len(records)}. Use fewer edits or fewer replicates"
        )
    return [records[i] for i in order[start : start + limit]]


def read_json_records(path: Path) -> list[object]:
    """Records from a .json array or a .jsonl file, with errors naming file and line/record
    (each a JSON value: the caller checks it is an object)."""
    if not path.exists():
        raise DataError(f"dataset file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"dataset file {path} is not text (byte {exc.start} is not UTF-8): give a .json or .jsonl file"
        ) from None
    except OSError as exc:
        raise DataError(f"dataset file {path} cannot be read: {exc.strerror or exc}") from None
    if not text.strip():
        raise DataError(f"dataset file {path} is empty")
    if path.suffix == ".jsonl":
        out: list[object] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise DataError(too_deep(f"{path}:{lineno}")) from None
            if (nesting_depth(record) or 0) > MAX_NESTING:
                raise DataError(too_deep(f"{path}:{lineno}"))
            out.append(record)
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); expected a JSON array or a .jsonl file"
        ) from None
    except RecursionError:
        raise DataError(too_deep(f"dataset file {path}")) from None
    if (nesting_depth(data) or 0) > MAX_NESTING:
        raise DataError(too_deep(f"dataset file {path}"))
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    return data


def hub_records_file(dataset: str, source: str) -> Path:
    """The rows of Hugging Face dataset ``source`` (``hub:ID[?config=NAME&split=SPLIT]``, split
    default ``train``; a local folder in datasets' layout works too), loaded with ``datasets``
    and written once as JSON lines under the cache (keyed by the dataset's fingerprint), so the
    plugin's parser and the edit digests read them like a file. Offline and uncached: one
    DataError saying so."""
    spec = parse_corpus(source, "--dataset-source")
    if spec.field != "text":
        raise DataError(f"{dataset}: --dataset-source {source!r}: an edit dataset takes config= and split=, not field=")
    split = spec.split or "train"
    ds = load_hub_dataset(spec, split, f"{dataset}: --dataset-source {source!r}")
    key = hashlib.sha1(f"{spec.name}|{spec.config}|{split}|{getattr(ds, '_fingerprint', '')}".encode()).hexdigest()[:16]
    target = cache_dir() / "datasets" / dataset / f"hub-{key}.jsonl"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp-{os.getpid()}")
        with tmp.open("w", encoding="utf-8") as f:
            for row in ds:
                f.write(json.dumps(row, default=str) + "\n")
        tmp.replace(target)
    return target


def need_str(raw: Mapping[str, object], key: str, where: str = "") -> str:
    """``raw[key]`` as a non-empty string, else a DataError naming the field."""
    name = f"{where}{key}"
    if key not in raw:
        raise DataError(f"missing field {name!r}")
    value = raw[key]
    if not isinstance(value, str):
        raise DataError(f"field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"field {name!r} is empty")
    return value


def need_list(raw: Mapping[str, object], key: str, where: str = "", allow_missing: bool = False) -> list[Any]:
    """``raw[key]`` as a list (its items JSON values the caller checks), else a DataError naming the field."""
    name = f"{where}{key}"
    if key not in raw:
        if allow_missing:
            return []
        raise DataError(f"missing field {name!r}")
    value = raw[key]
    if not isinstance(value, list):
        raise DataError(f"field {name!r} must be a list, got {type(value).__name__}")
    return value


def fill_template(template: str, subject: str, where: str = "prompt") -> str:
    """ROME-style ``"{} is located in"`` -> the prompt with the subject."""
    count = template.count("{}")
    if count == 0:
        raise DataError(f"field {where!r} has no '{{}}' placeholder for the subject: {template!r}")
    if count > 1:  # filling only the first would edit the model on a prompt with a literal {} in it
        raise DataError(f"field {where!r} has {count} '{{}}' placeholders; the subject fills exactly one: {template!r}")
    return template.replace("{}", subject)


def parse_easyedit_flat(raw: Mapping[str, object], dataset: str, index: int) -> EditRecord:
    """EasyEdit's flat edit schema (CounterFact/zsRE ``*-edit.json``): prompt, subject,
    target_new, ground_truth, rephrase_prompt, locality_prompt, locality_ground_truth."""
    prompt = need_str(raw, "prompt")
    subject = need_str(raw, "subject")
    target_new = need_str(raw, "target_new")
    truth = raw.get("ground_truth")
    if isinstance(truth, list):
        truth = truth[0] if truth else None
    given = raw.get("rephrase_prompt")
    # EditRecord checks each rephrase is a non-empty string
    rephrases = [given] if isinstance(given, str) else list(cast("list[str]", given or []))
    locality = []
    if raw.get("locality_prompt"):
        answer = raw.get("locality_ground_truth")
        if isinstance(answer, list):
            answer = answer[0] if answer else None
        if not isinstance(answer, str) or not answer.strip():
            raise DataError("field 'locality_ground_truth' is missing or empty while 'locality_prompt' is set")
        locality.append(LocalityPrompt(cast(str, raw["locality_prompt"]), answer))  # EditRecord checks it
    return EditRecord(
        case_id=str(raw.get("case_id", index)),
        subject=subject,
        prompt=prompt,
        target_new=target_new,
        target_true=truth if isinstance(truth, str) and truth.strip() else None,
        rephrases=rephrases,
        locality=locality,
        source={"dataset": dataset, "id": raw.get("case_id", index), "schema": "easyedit"},
    )


class JsonEditDataset(EditDataset):
    """Base class of the JSON edit-dataset plugins.

    Subclasses set ``name``, ``data_files`` (paths inside the data folder, first existing
    wins), ``url`` (the canonical public file), ``sample`` (path of the bundled sample) and
    implement ``parse(raw, index) -> list[EditRecord]`` (``index``: the record's position
    in the file; one dataset record may hold several edits). ``limit`` counts dataset
    records; the edits of one record stay together.
    """

    data_files: ClassVar[tuple[str, ...]] = ()
    url: ClassVar[str | None] = None
    url_sha256: ClassVar[str | None] = None
    sample: ClassVar[Path | None] = None
    #: a record whose target_new equals its target_true asks for an edit that changes nothing:
    #: ``refuse`` it (a mistake in the file), or ``note`` it and keep it (a dataset that ships
    #: such records, as zsRE does)
    no_op_edits: ClassVar[str] = "refuse"

    def __init__(self) -> None:
        self.skipped: list[str] = []
        self.source_used: str = ""
        self.notes: list[str] = []

    def parse(self, raw: Mapping[str, object], index: int) -> list[EditRecord]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def check_source(cls, source: str | Path | None) -> None:
        """Refuse an explicit ``source`` that cannot be read, without reading or downloading
        it (what `validate` checks, and every command before it writes): ``sample`` where the
        dataset ships none, a malformed URL checksum or hub spec, a ``hub:`` folder or a local
        file that is not there."""
        if source is None:
            return
        text = str(source)
        if text == "sample":
            if cls.sample is None:
                raise DataError(f"{cls.name}: source 'sample' asks for the bundled sample, and this dataset ships none")
        elif text.startswith("hub:"):
            check_hub_folder(parse_corpus(text, "--dataset-source"), f"{cls.name}: --dataset-source {text!r}")
        elif text.startswith(("http://", "https://")):
            split_checksum(text)
        else:
            local_source_file(text, cls.name)

    def resolve_source(self, source: str | Path | None) -> Path:
        if source is not None:
            text = str(source)
            self.check_source(text)
            if text == "sample" and self.sample is not None:  # check_source refuses it where there is none
                self.notes.append(
                    f"{self.name}: using the bundled sample ({self.sample.name}), as asked (source: sample)"
                )
                return self.sample
            if text.startswith("hub:"):
                return hub_records_file(self.name, text)
            if text.startswith(("http://", "https://")):
                url, checksum = split_checksum(text)
                return fetch(url, download_cache_path(cache_dir() / "datasets" / self.name, url), checksum)
            return local_source_file(text, self.name)
        dd = data_dir(self.data_dir)
        if dd is not None:
            for rel in self.data_files:
                if (dd / rel).is_file():
                    return dd / rel
        if self.url:
            cached = download_cache_path(cache_dir() / "datasets" / self.name, self.url)
            if cached.exists() or not offline():
                try:
                    return fetch(self.url, cached, self.url_sha256)
                except DataError as exc:
                    self.notes.append(str(exc))
        if self.sample is None:
            raise DataError(f"{self.name}: no source given and none found; pass a file")
        self.notes.append(
            f"{self.name}: using the small bundled sample ({self.sample.name}); set LMCOMPOSE_DATA_DIR "
            f"(with {', '.join(self.data_files) or 'the dataset file'}) or pass a source for the real data"
        )
        return self.sample

    def load(
        self,
        source: str | Path | None = None,
        limit: int | None = None,
        seed: int | None = 0,
        replicate: int = 0,
        skip_invalid: bool = False,
    ) -> list[EditRecord]:
        path = self.resolve_source(source)
        self.source_used = str(path)
        items = read_json_records(path)
        groups: list[list[EditRecord]] = []
        self.skipped = []
        owners: dict[str, list[int]] = {}  # case id -> the records that have it
        for i, item in enumerate(items):
            try:
                if not isinstance(item, Mapping):
                    raise DataError(f"expected an object, got {type(item).__name__}")
                _check_case_id(item)
                records = self.parse(item, i)
                for rec in records:
                    rec.raw = dict(item)
                    if self.no_op_edits == "refuse" and _no_op(rec):
                        raise DataError(
                            f"target_new {rec.target_new!r} equals target_true: the edit would change nothing; "
                            "give the record another target_new"
                        )
            except DataError as exc:
                case = item.get("case_id") if isinstance(item, Mapping) else None
                msg = f"{path}: record {i}" + (f" (case_id {case})" if case is not None else "") + f": {exc}"
                if skip_invalid:
                    self.skipped.append(msg)
                    continue
                raise DataError(msg + ". Fix the record, or pass --skip-invalid to skip such records") from None
            groups.append(records)
            for rec in records:
                owners.setdefault(rec.case_id, []).append(i)
        shared = {cid: at for cid, at in owners.items() if len(set(at)) > 1}
        if shared:
            cid, at = next(iter(shared.items()))
            self.notes.append(
                f"{self.name}: {len(shared)} case_id(s) of {path} belong to more than one record (case_id {cid!r}: "
                f"records {', '.join(map(str, sorted(set(at))[:5]))}); they are kept, as edits are told apart by "
                "their content, but the rows' edit_ids cannot tell them apart: give each record its own case_id"
            )
        if self.skipped:
            self.notes.append(f"{self.name}: skipped {len(self.skipped)} invalid record(s) of {len(items)} in {path}")
        if not groups:
            raise DataError(f"{path}: no valid {self.name} records")
        groups_chosen = select_records(groups, limit, seed, replicate, dataset=f"{self.name} ({path})")
        chosen = [r for group in groups_chosen for r in group]
        no_ops = [r for r in chosen if _no_op(r)]
        if no_ops:
            self.notes.append(
                f"{self.name}: {len(no_ops)} of the {len(chosen)} edit requests ask for a target_new equal to their "
                f"target_true (case_id {no_ops[0].case_id!r}: {no_ops[0].target_new!r}), as the dataset has them; "
                "they are kept, and their edit success measures no change"
            )
        return chosen


def _check_case_id(item: Mapping[str, object]) -> None:
    """A record's ``case_id``, when it has one, is a non-empty string or a whole number (a null
    would become the id "None", shared by every such record)."""
    if "case_id" not in item:
        return
    value = item["case_id"]
    if isinstance(value, bool) or not isinstance(value, str | int) or (isinstance(value, str) and not value.strip()):
        raise DataError(
            f"field 'case_id' is {describe_value(value)}; give the record an id of its own (a string or a whole number)"
        )


def _no_op(record: EditRecord) -> bool:
    """Whether ``record`` asks for the target it already has."""
    return record.target_true is not None and record.target_new.strip() == record.target_true.strip()
