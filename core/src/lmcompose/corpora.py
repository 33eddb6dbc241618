"""Corpus specs (``--ppl-corpus``, ``--calibration-corpus``): this module re-exports
:mod:`lmcompose.data.corpora`, where they now live, so imports written before the
:mod:`lmcompose.data` package keep working."""

from __future__ import annotations

from lmcompose.data.corpora import HUB_OPTIONS as HUB_OPTIONS
from lmcompose.data.corpora import (
    ROLES,
    CorpusSpec,
    check_corpora,
    check_corpus_files,
    check_hub_folder,
    corpus_identity,
    load_corpus,
    longer_text_advice,
    parse_corpus,
    read_text_file,
)
from lmcompose.data.corpora import load_hub_dataset as load_hub_dataset

# The names imported ``as`` themselves stay importable from here; ``__all__`` is as before.
__all__ = [
    "ROLES",
    "CorpusSpec",
    "check_corpora",
    "check_corpus_files",
    "check_hub_folder",
    "corpus_identity",
    "load_corpus",
    "longer_text_advice",
    "parse_corpus",
    "read_text_file",
]
