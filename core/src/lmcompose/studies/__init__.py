"""Studies: the paper's whole experiment (editors × compressors × strengths × orders ×
datasets × replicates) as one file, one command and one report.

* :mod:`~lmcompose.studies.spec` — the study file, validated without loading a model;
* :mod:`~lmcompose.studies.runner` — runs it on one machine, a Ray cluster, or as shards;
  merges shard folders;
* a study's report (Table 1, Figures 1–2, 3 and 5, the flat table) is :mod:`lmcompose.reports.study`.
"""

from lmcompose.studies.spec import DatasetSpec, EditorSpec, Entry, Study, StudyError, load_study

__all__ = ["DatasetSpec", "EditorSpec", "Entry", "Study", "StudyError", "load_study"]
