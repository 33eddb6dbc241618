"""Where data comes from: the data folder, text corpora, calibration windows, samples, and
edit records from files.

``LMCOMPOSE_DATA_DIR`` (or ``--data-dir``) names a folder laid out like the shared data
folder: ``wikitext-2-raw/``, ``counterfact/``, ``zsre/``, ``mquake/``. It is consulted before
any download. Without it (and without network) commands run on the small samples bundled
in ``lmcompose/sample_data`` and say so.

The modules, each importing only those above it (tests/test_data_package.py keeps it so):

- :mod:`lmcompose.data.files`: bundled samples, checksums, local text and source files;
- :mod:`lmcompose.data.download`: the download cache and verified downloads;
- :mod:`lmcompose.data.wikitext`: wikitext-2 from the data folder or the hub;
- :mod:`lmcompose.data.corpora`: corpus specs (``--ppl-corpus``, ``--calibration-corpus``);
- :mod:`lmcompose.data.windows`: tokenized calibration text and its seeded windows;
- :mod:`lmcompose.data.edits`: edit records from JSON files, URLs and hub ids (the base of
  edit-dataset plugins; ``lmcompose.edit_data`` re-exports it).

This package's own names (``__all__``) are the plugin API of docs/plugins.md; the others are
kept importable from here as they were before the package existed.
"""

from __future__ import annotations

from lmcompose.data.corpora import context_corpus_identity as corpus_identity
from lmcompose.data.corpora import corpus_text as corpus_text
from lmcompose.data.files import sample_path, sample_text
from lmcompose.data.wikitext import WIKITEXT_FILES as WIKITEXT_FILES
from lmcompose.data.wikitext import wikitext_file, wikitext_text
from lmcompose.data.wikitext import wikitext_rows as wikitext_rows
from lmcompose.data.windows import MIN_CALIBRATION_WINDOW as MIN_CALIBRATION_WINDOW
from lmcompose.data.windows import calibration_windows
from lmcompose.data.windows import tokenize_corpus as tokenize_corpus
from lmcompose.data.windows import tokenizer_fingerprint as tokenizer_fingerprint
from lmcompose.paths import cache_dir, data_dir

# The names imported ``as`` themselves stay importable from here, as before the package
# existed; only ``__all__`` is the plugin API.
__all__ = [
    "cache_dir",
    "calibration_windows",
    "corpus_identity",
    "data_dir",
    "sample_path",
    "sample_text",
    "wikitext_file",
    "wikitext_text",
]
