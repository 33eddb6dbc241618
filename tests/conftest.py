from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TESTS = Path(__file__).parent
PLUGIN_DIR = TESTS / "plugins"


@pytest.fixture
def register():
    """Register in-test plugin objects; unregistered again after the test."""
    from lmcompose.plugins import register_plugin, unregister_plugin

    names: list[str] = []

    def _register(plugin, name, distribution="lmcompose-test"):
        register_plugin(plugin, name, distribution)
        names.append(name)

    try:
        yield _register
    finally:
        for n in names:
            unregister_plugin(n)


@pytest.fixture
def fake_dists(tmp_path, monkeypatch):
    """Install fake distributions (dist-info folders with entry points) on sys.path.

    ``fake_dists({"lmcompose-broken": {"broken": "broken_plugin"}})``; plugins reload
    before and after the test.
    """
    from lmcompose.plugins import reset_plugins

    def _install(dists: dict[str, dict[str, str]]) -> None:
        for dist, eps in dists.items():
            info = tmp_path / f"{dist.replace('-', '_')}-0.1.0.dist-info"
            info.mkdir()
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
            lines = "\n".join(f"{k} = {v}" for k, v in eps.items())
            (info / "entry_points.txt").write_text(f"[lmcompose]\n{lines}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.syspath_prepend(str(PLUGIN_DIR))
        reset_plugins()

    try:
        yield _install
    finally:
        for mod in [
            m
            for m in sys.modules
            if m.endswith("_plugin") and m.split(".")[0] in {p.stem for p in PLUGIN_DIR.glob("*.py")}
        ]:
            del sys.modules[mod]
        reset_plugins()


@pytest.fixture(autouse=True)
def _fresh_plugins_after_env_changes(monkeypatch):
    for var in ("LMCOMPOSE_LOAD_PLUGINS", "LMCOMPOSE_BLOCK_PLUGINS", "LMCOMPOSE_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    yield
