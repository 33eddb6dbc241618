"""The run context every step and metric receives: the edits, the data and calibration
settings, the base model's reference measurements, progress reporting and notes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmcompose.api.records import EditRecord

if TYPE_CHECKING:
    import torch

    from lmcompose.models.handle import LM

__all__ = ["Context", "Progress", "References"]


class Progress:
    """A progress reporter; the CLI passes one that draws rich progress bars."""

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        """A task of ``total`` units; the callable it yields advances it (by 1 unless told)."""
        yield _advance_nothing

    def note(self, message: str) -> None:
        pass


def _advance_nothing(n: int = 1) -> None:
    """What :meth:`Progress.task` yields when nothing draws progress."""


class References:
    """Measurements of the unmodified base model that later evaluations compare against (the
    locality prompts' answer-position argmaxes, for locality preservation), each kept under
    what it is computed from: its ``kind``, a digest of its ``content`` (e.g. the prompts
    and answers) and the base model's identity (``model``: the run's model fingerprint).

    This one keeps them in memory, for one process. A run folder's
    (:meth:`lmcompose.engine.run_folder.RunFolder.references`) also stores each in the
    folder, so a resumed run and every Ray task of a study read it instead of computing it
    again. Values must be JSON data (lists, numbers, strings)."""

    def __init__(self, model: str | None = None, records: Mapping[str, Mapping[str, object]] | None = None):
        self.model = model
        self._records: dict[str, dict[str, object]] = {}
        self.computed = 0  # references put here by this process (passes of the base model it made)
        for record in (records or {}).values():
            self.adopt(record)

    def key(self, kind: str, content: str) -> str:
        """The name a reference is kept under: a digest of its kind, content and base model."""
        text = json.dumps([kind, content, self.model])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def record(self, kind: str, content: str, value: object) -> dict[str, object]:
        return {"key": self.key(kind, content), "kind": kind, "content": content, "model": self.model, "value": value}

    def get(self, kind: str, content: str) -> Any:
        """The reference of ``kind`` computed from ``content`` on this base model, or None.

        It is the JSON data the metric put (its own shape: the metric that asks knows it)."""
        got = self._records.get(self.key(kind, content)) or self._read(self.key(kind, content))
        if got is None or (got.get("kind"), got.get("content"), got.get("model")) != (kind, content, self.model):
            return None
        self._records[str(got["key"])] = got
        return got["value"]

    def put(self, kind: str, content: str, value: object) -> None:
        """Keep a reference just computed on the base model."""
        record = self.record(kind, content, value)
        self._records[self.key(kind, content)] = record
        self.computed += 1
        self._write(record)

    def adopt(self, record: Mapping[str, object]) -> None:
        """Hold a reference computed elsewhere (another process, a stored file), as it is."""
        key = record.get("key") if isinstance(record, Mapping) else None
        if isinstance(key, str) and "value" in record:
            self._records[key] = dict(record)

    def records(self) -> dict[str, dict[str, object]]:
        """Every reference held, by key (to hand to another process)."""
        return dict(self._records)

    def _read(self, key: str) -> dict[str, object] | None:
        return None

    def _write(self, record: dict[str, object]) -> None:
        pass


@dataclass
class Context:
    """Everything a step or a metric may use. Steps never load data or models themselves.

    ``edits`` are this run's edit requests; ``unedited`` the control records of the batch
    being evaluated (records of the same dataset that no edit batch holds; their true
    targets' NLL is ``unedited_nll``); ``calibration_batches()`` gives token windows for
    calibration (lazy, cached); ``references`` keeps the base model's reference
    measurements (:class:`References`); ``state`` is a scratch dict for anything else a
    step or metric caches; ``notes`` collects messages for the user.
    """

    edits: list[EditRecord] = field(default_factory=list)
    unedited: list[EditRecord] = field(default_factory=list)
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    data_dir: Path | None = None
    cache_dir: Path | None = None
    calibration_samples: int = 128
    calibration_seqlen: int = 512
    #: The seed of the calibration windows; None = ``seed``. The engine sets it while a step
    #: runs under a ``calibration_seed`` variant (a study's ``reseed`` or ``noise_floor``).
    calibration_seed: int | None = None
    #: Corpus specs (:mod:`lmcompose.data.corpora`): None = wikitext-2, or the bundled sample with a note.
    ppl_corpus: str | None = None
    calibration_corpus: str | None = None
    metric_options: dict[str, dict[str, object]] = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)
    references: References = field(default_factory=References)
    #: each entry is whatever the step or metric that keeps it put there
    state: dict[Hashable, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: The unmodified base model (an LM), kept by the engine when a step of the plan sets
    #: ``Intervention.needs_base_model``; None otherwise.
    base_model: LM | None = None

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
            self.progress.note(message)

    def calibration_batches(self, lm: LM, n_samples: int | None = None, seqlen: int | None = None) -> torch.Tensor:
        """``n_samples`` random windows of ``seqlen`` tokens (a LongTensor, n x seqlen) drawn,
        seeded, from the calibration text (wikitext-2 train prefix + validation when the data
        folder has them, else the bundled sample text)."""
        from lmcompose.data import calibration_windows

        n = n_samples or self.calibration_samples
        s = seqlen or self.calibration_seqlen
        if s > lm.max_positions:
            self.note(
                f"calibration windows of {s} tokens are longer than the model's {lm.max_positions} positions: "
                f"cut to {lm.max_positions}"
            )
            s = lm.max_positions
        seed = self.seed if self.calibration_seed is None else self.calibration_seed
        key = ("calibration", id(lm.tokenizer), n, s, seed)
        if key not in self.state:
            self.state[key] = calibration_windows(lm.tokenizer, n, s, seed, self)
        return self.state[key]

    def stats_dir(self) -> Path:
        from lmcompose.paths import cache_dir

        d = (self.cache_dir or cache_dir()) / "stats"
        d.mkdir(parents=True, exist_ok=True)
        return d
