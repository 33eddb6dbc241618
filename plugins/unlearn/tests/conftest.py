"""Fixtures of the unlearn plugin's tests (the data: unlearn_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from unlearn_fixtures import write_facts


@pytest.fixture
def facts_dir(tmp_path: Path) -> Path:
    return write_facts(tmp_path / "data")
