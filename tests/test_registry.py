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


class NotAStep:
    """Registered as an intervention by mistake."""

    name = "notastep"


def test_a_registry_checks_what_it_hands_out_against_its_base():
    """As lm-eval's registry does: an object when it is registered, a lazy entry when loaded."""
    from lmcompose.errors import PluginLoadError

    reg: Registry[type] = Registry("intervention", base="lmcompose.api:Intervention")
    with pytest.raises(TypeError) as exc:
        reg.add(NotAStep, distribution="lmcompose-oops")
    text = str(exc.value)
    assert "intervention 'notastep' from lmcompose-oops is NotAStep" in text
    assert "not a subclass of lmcompose.Intervention" in text and "LMCOMPOSE_BLOCK_PLUGINS" in text
    reg.add("collections:OrderedDict", name="od", distribution="lmcompose-lazy")
    for _ in range(2):  # refused each time it is asked for
        with pytest.raises(
            PluginLoadError, match="intervention 'od' from lmcompose-lazy is OrderedDict, not a subclass"
        ):
            reg.get("od")
    reg.add("lmcompose.interventions.magnitude.intervention:Magnitude", name="magnitude", distribution="d")
    assert reg.get("magnitude").name == "magnitude"
    specs: Registry[object] = Registry("architecture", base="lmcompose.models.arch:ArchSpec", instances=True)
    with pytest.raises(TypeError, match="not an instance of lmcompose.ArchSpec"):
        specs.add(NotAStep, name="llama-ish", distribution="d")
    either: Registry[type] = Registry("dataset", base="lmcompose.api:EditDataset|TextCorpus")
    with pytest.raises(TypeError, match="not a subclass of lmcompose.EditDataset or lmcompose.TextCorpus"):
        either.add(NotAStep, distribution="d")


def test_a_plugin_that_registers_the_wrong_thing_is_reported_and_the_rest_works(register):
    from lmcompose.hookspecs import hookimpl
    from lmcompose.plugins import get_interventions, plugin_infos

    class Plugin:
        @hookimpl
        def register_interventions(self, register):
            register(NotAStep)

    with pytest.warns(Warning):
        register(Plugin(), "oops", "lmcompose-oops")
        assert "magnitude" in get_interventions() and "notastep" not in get_interventions()
    info = next(i for i in plugin_infos() if i.name == "oops")
    assert "not a subclass of lmcompose.Intervention" in info.error
