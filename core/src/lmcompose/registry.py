"""A typed registry of named things, with lazy ``"module:attr"`` entries.

Plugins never touch the registry directly: the host hands each ``register_*`` hook a
registrar bound to the plugin's distribution, so a duplicate name can say who registered
both copies. A registry with a ``base`` checks what it hands out, as lm-eval's registry does:
a thing registered as an object is checked when it is registered, a lazy entry when it is
first loaded, and one that is not a ``base`` (a subclass, or an instance with ``instances``)
is one error naming the entry, its distribution and the fix.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, cast

from lmcompose.errors import DuplicateNameError, PluginLoadError, UnknownNameError

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@dataclass
class Entry(Generic[T_co]):
    """One registered thing. ``target`` is the object or a lazy ``"module:attr"`` string."""

    name: str
    target: object
    distribution: str
    summary: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    _loaded: object = None

    @property
    def is_lazy(self) -> bool:
        return isinstance(self.target, str) and self._loaded is None

    def load(self) -> T_co:
        """The registered thing, imported on first use when lazy. Its type is what the
        registry's ``base`` says: :meth:`Registry.add` and :meth:`Registry.get` check it."""
        if self._loaded is None:
            if isinstance(self.target, str):
                module_name, _, attr = self.target.partition(":")
                obj: object = importlib.import_module(module_name)
                for part in attr.split(".") if attr else []:
                    obj = getattr(obj, part)
                self._loaded = obj
            else:
                self._loaded = self.target
        return cast(T_co, self._loaded)


class Registrar(Protocol[T_co]):
    """``register(target, name=None, summary=None, **extra)``: what a ``register_*`` hook
    receives (:data:`lmcompose.hookspecs.Register`); returns the new entry (None where the
    host skipped a duplicate)."""

    def __call__(
        self, target: object, name: str | None = None, *, summary: str | None = None, **extra: object
    ) -> Entry[T_co] | None: ...


class Registry(Generic[T]):
    """Name -> thing, for one kind ("intervention", "metric", "dataset", "architecture")."""

    def __init__(self, kind: str, hint: str = "", base: str | None = None, instances: bool = False):
        """``base``: what every entry must be, as ``"module:Class"`` or ``"module:A|B"`` (imported
        when first needed); ``instances``: entries are instances of it, not subclasses."""
        self.kind = kind
        self.hint = hint
        self.base = base
        self.instances = instances
        self._entries: dict[str, Entry[T]] = {}

    def wrong_base(self, obj: object) -> str | None:
        """Why ``obj`` cannot be an entry of this registry (None when it can)."""
        if self.base is None:
            return None
        module_name, _, attrs = self.base.partition(":")
        module = importlib.import_module(module_name)
        bases = tuple(getattr(module, a) for a in attrs.split("|"))
        if self.instances:
            ok = isinstance(obj, bases)
        else:
            ok = isinstance(obj, type) and issubclass(obj, bases)
        if ok:
            return None
        names = " or ".join(f"lmcompose.{a}" for a in attrs.split("|"))
        what = f"an instance of {names}" if self.instances else f"a subclass of {names}"
        shown = obj.__qualname__ if isinstance(obj, type) else repr(obj)[:80]
        return f"is {shown}, not {what}"

    def _refuse(self, name: str, distribution: str, why: str) -> str:
        return (
            f"{self.kind} {name!r} from {distribution} {why}: the plugin must register one "
            f"(docs/plugins.md). Fix the plugin, or skip it with LMCOMPOSE_BLOCK_PLUGINS"
        )

    def add(
        self,
        target: object,
        *,
        name: str | None = None,
        distribution: str = "?",
        summary: str | None = None,
        **extra: object,
    ) -> Entry[T]:
        if name is None:
            if isinstance(target, str):
                raise TypeError(f"a lazy {self.kind} entry {target!r} needs name=")
            name = getattr(target, "name", None)  # a class's ``name`` ClassVar
            if not name:
                raise TypeError(f"{self.kind} {target!r} has no `name` attribute; pass name=")
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            other = self._entries[name]
            raise DuplicateNameError(
                f"{self.kind} {name!r} is registered twice: by {other.distribution} and by "
                f"{distribution}. Uninstall one of them, or block one with "
                f"LMCOMPOSE_BLOCK_PLUGINS."
            )
        if not isinstance(target, str):
            why = self.wrong_base(target)
            if why is not None:  # when the plugin registers it: the plugin is reported as failed
                raise TypeError(self._refuse(name, distribution, why))
        if summary is None:
            summary = "" if isinstance(target, str) else _first_line(getattr(target, "__doc__", ""))
        entry: Entry[T] = Entry(name, target, distribution, summary, dict(extra))
        self._entries[name] = entry
        return entry

    def registrar(self, distribution: str) -> Registrar[T]:
        """The ``register`` callable handed to one plugin's hook."""

        def register(
            target: object, name: str | None = None, *, summary: str | None = None, **extra: object
        ) -> Entry[T]:
            return self.add(target, name=name, distribution=distribution, summary=summary, **extra)

        return register

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries, self.hint) from None

    def get(self, name: str) -> T:
        entry = self.entry(name)
        was_lazy = entry.is_lazy
        obj = entry.load()
        if was_lazy:
            why = self.wrong_base(obj)
            if why is not None:
                entry._loaded = None  # asked again, it is refused again
                raise PluginLoadError(self._refuse(name, entry.distribution, why))
        return obj

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]


def _first_line(doc: str | None) -> str:
    doc = (doc or "").strip()
    return doc.splitlines()[0].strip() if doc else ""
