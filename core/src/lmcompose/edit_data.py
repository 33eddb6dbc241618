"""Shared machinery for edit-dataset plugins (the plugin API of docs/plugins.md): this module
re-exports :mod:`lmcompose.data.edits` and the download and file helpers it uses
(:mod:`lmcompose.data.download`, :mod:`lmcompose.data.files`), where they now live, so
plugins and imports written before the :mod:`lmcompose.data` package keep working."""

from __future__ import annotations

from lmcompose.data.download import DOWNLOAD_TIMEOUT_S as DOWNLOAD_TIMEOUT_S
from lmcompose.data.download import download_cache_path as download_cache_path
from lmcompose.data.download import fetch as fetch
from lmcompose.data.download import split_checksum as split_checksum
from lmcompose.data.edits import (
    JsonEditDataset,
    fill_template,
    need_list,
    need_str,
    parse_easyedit_flat,
    read_json_records,
    select_records,
)
from lmcompose.data.edits import hub_records_file as hub_records_file
from lmcompose.data.files import local_source_file as local_source_file
from lmcompose.data.files import sha256_file as sha256_file

# The names imported ``as`` themselves stay importable from here; ``__all__`` is as before.
__all__ = [
    "JsonEditDataset",
    "fill_template",
    "need_list",
    "need_str",
    "parse_easyedit_flat",
    "read_json_records",
    "select_records",
]
