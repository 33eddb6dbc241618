from __future__ import annotations

import pytest
from lmcompose.errors import DuplicateNameError, UnknownNameError
from lmcompose.registry import Registry


class Thing:
    """A thing with a name."""

    name = "thing"


def test_add_and_get_an_object():
    reg: Registry[type] = Registry("widget")
    reg.registrar("dist-a")(Thing)
    assert reg.get("thing") is Thing
    assert reg.entry("thing").distribution == "dist-a"
    assert reg.entry("thing").summary == "A thing with a name."
    assert "thing" in reg and len(reg) == 1 and list(reg) == ["thing"]


def test_lazy_entries_import_on_first_use():
    reg: Registry[object] = Registry("widget")
    reg.add("collections:OrderedDict", name="od", distribution="d")
    entry = reg.entry("od")
    assert entry.is_lazy
    import collections

    assert reg.get("od") is collections.OrderedDict
    assert not entry.is_lazy


def test_lazy_entry_needs_a_name():
    with pytest.raises(TypeError, match="needs name="):
        Registry("widget").add("collections:OrderedDict")


def test_duplicate_names_name_both_distributions():
    reg: Registry[type] = Registry("widget")
    reg.add(Thing, distribution="lmcompose-a")
    with pytest.raises(DuplicateNameError) as exc:
        reg.add(Thing, distribution="lmcompose-b")
    assert "lmcompose-a" in str(exc.value) and "lmcompose-b" in str(exc.value)


def test_unknown_name_suggests_the_closest_and_lists_all():
    reg: Registry[type] = Registry("intervention")
    for n in ("magnitude", "rtn", "sparsegpt"):
        reg.add(Thing, name=n, distribution="d")
    with pytest.raises(UnknownNameError) as exc:
        reg.get("magnitud")
    msg = str(exc.value)
    assert "Did you mean 'magnitude'" in msg
    assert "Available: magnitude, rtn, sparsegpt" in msg


def test_unknown_name_without_a_close_match_only_lists():
    reg: Registry[type] = Registry("metric")
    reg.add(Thing, name="perplexity", distribution="d")
    msg = str(pytest.raises(UnknownNameError, reg.get, "zzz").value)
    assert "Did you mean" not in msg and "perplexity" in msg
