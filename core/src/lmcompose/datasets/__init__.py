"""Built-in datasets, one module each as in a dataset plugin: ``records`` (EditRecord JSONL,
default the bundled sample; records.py), and the text corpora ``wikitext2`` (wikitext.py)
and ``text-file`` (text_file.py). Registered by ``lmcompose.default_plugins.datasets``."""

from lmcompose.datasets.records import Records
from lmcompose.datasets.text_file import TextFile
from lmcompose.datasets.wikitext import WikiText2

__all__ = ["Records", "TextFile", "WikiText2"]
