import pytest

from lmcompose.compose import load_edits
from lmcompose.errors import DataError


def test_{{module}}_sample_loads(offline_without_data):
    records = load_edits("{{name}}", seed=None)
    assert [r.case_id for r in records] == ["1", "2"]
    assert records[0].prompt == "Oslo is the capital of" and records[0].target_new == "Denmark"


def test_{{module}}_bad_record_names_the_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"subject": "Oslo", "template": "no placeholder", "new": "x"}]')
    with pytest.raises(DataError, match="template"):
        load_edits("{{name}}", source=bad)
