"""The plugin manager: built-in plugins, entry points loaded one by one, typed hook wrappers.

Host code never calls ``pm.hook.*`` itself; it calls the typed wrappers here
(:func:`get_interventions`, :func:`get_metrics`, :func:`get_datasets`,
:func:`get_architectures`, :func:`register_cli_commands`).

Environment:

* ``LMCOMPOSE_LOAD_PLUGINS`` — comma-separated allow-list of entry-point plugins (entry point
  name or distribution name). Set but empty: no third-party plugins. Built-ins always load.
* ``LMCOMPOSE_BLOCK_PLUGINS`` — comma-separated plugins not to load.
* ``LMCOMPOSE_STRICT_PLUGINS=1`` — a plugin that fails to load is fatal (as ``--strict``).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, cast

import pluggy

from lmcompose import hookspecs
from lmcompose.errors import DuplicateNameError, PluginLoadError
from lmcompose.registry import Entry, Registrar, Registry

if TYPE_CHECKING:  # pragma: no cover
    from lmcompose.api import EditDataset, Intervention, Metric, TextCorpus
    from lmcompose.engine.run_folder import RunInfo
    from lmcompose.models.arch import ArchSpec

ENTRY_POINT_GROUP = "lmcompose"
CORE_DISTRIBUTION = "lmcompose"
DEFAULT_PLUGINS = (
    "lmcompose.default_plugins.interventions",
    "lmcompose.default_plugins.metrics",
    "lmcompose.default_plugins.datasets",
    "lmcompose.default_plugins.architectures",
)
HOOK_NAMES = (
    "register_interventions",
    "register_metrics",
    "register_datasets",
    "register_architectures",
    "register_commands",
    "row_written",
    "run_closed",
)


class PluginLoadWarning(UserWarning):
    """A plugin failed to load and was skipped."""


@dataclass
class PluginInfo:
    """What ``lmcompose plugins`` shows for one plugin."""

    name: str
    distribution: str
    version: str
    module: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "builtin": self.builtin,
            "hooks": self.hooks,
            "error": self.error,
        }


class _State:
    def __init__(self, strict: bool):
        self.strict = strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        #: every kind's registry, its entries checked against the kind's base (``_BASES``)
        self.registries: dict[str, Registry[object]] = {}

    # -- loading ---------------------------------------------------------------------
    def load(self) -> None:
        version = _dist_version(CORE_DISTRIBUTION)
        for module_name in DEFAULT_PLUGINS:
            module = importlib.import_module(module_name)
            short = module_name.rsplit(".", 1)[-1]
            self.add(module, f"builtin:{short}", CORE_DISTRIBUTION, version, builtin=True)
        allow = _env_list("LMCOMPOSE_LOAD_PLUGINS")
        block = set(_env_list("LMCOMPOSE_BLOCK_PLUGINS") or ())
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "?"
            dist_version = ep.dist.version if ep.dist is not None else "?"
            if allow is not None and ep.name not in allow and dist not in allow:
                continue
            if ep.name in block or dist in block:
                continue
            if ep.name in self.infos:
                self.fail(
                    PluginInfo(ep.name, dist, dist_version, ep.value, False),
                    f"a plugin named {ep.name!r} is already loaded from {self.infos[ep.name].distribution}",
                )
                continue
            try:
                plugin = ep.load()
            except BaseException as exc:  # noqa: BLE001 - a plugin may raise anything
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self.fail(PluginInfo(ep.name, dist, dist_version, ep.value, False), _describe(exc))
                continue
            self.add(plugin, ep.name, dist, dist_version, builtin=False)

    def add(self, plugin: object, name: str, dist: str, version: str, builtin: bool) -> None:
        module = getattr(plugin, "__name__", type(plugin).__name__)
        info = PluginInfo(name, dist, version, module, builtin)
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:
            self.fail(info, _describe(exc))
            return
        try:
            self.pm.check_pending()
        except Exception as exc:
            self.pm.unregister(name=name)
            self.fail(info, _describe(exc))
            return
        info.hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or () if h.name in HOOK_NAMES)
        self.infos[name] = info
        self.registries.clear()

    def remove(self, name: str) -> None:
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        self.infos.pop(name, None)
        self.registries.clear()

    def fail(self, info: PluginInfo, error: str) -> None:
        info.error = error
        self.infos[info.name] = info
        message = (
            f"plugin {info.name!r} from {info.distribution} failed to load and was skipped: "
            f"{error}. Fix or uninstall it (pip uninstall {info.distribution}), or skip it "
            f"with LMCOMPOSE_BLOCK_PLUGINS={info.name}."
        )
        if self.strict:
            raise PluginLoadError(message)
        warnings.warn(message, PluginLoadWarning, stacklevel=3)

    # -- typed hook calls ------------------------------------------------------------
    def collect(self, hook_name: str, registry: Registry[object]) -> Registry[object]:
        caller = getattr(self.pm.hook, hook_name)
        # get_hookimpls() is in registration order: built-ins first.
        for impl in caller.get_hookimpls():
            info = self.infos.get(impl.plugin_name)
            dist = info.distribution if info else impl.plugin_name
            kwargs = {"register": self._registrar(registry, dist, info)}
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except (DuplicateNameError, PluginLoadError):
                raise
            except Exception as exc:
                if info is None:
                    raise
                self.fail(info, f"{hook_name} raised {_describe(exc)}")
        return registry

    def _registrar(self, registry: Registry[object], dist: str, info: PluginInfo | None) -> Registrar[object]:
        """``register`` for one plugin: a name that is already registered keeps its first
        registration; the later one (a third-party plugin's) is reported as failed, naming
        both distributions, and everything else keeps working (fatal with --strict)."""
        base = registry.registrar(dist)

        def register(
            target: object, name: str | None = None, *, summary: str | None = None, **extra: object
        ) -> Entry[object] | None:
            try:
                return base(target, name=name, summary=summary, **extra)
            except DuplicateNameError as exc:
                if info is None or info.builtin:
                    raise
                self.fail(info, f"{exc} The registration from {dist} was skipped; the first one is used")
                return None

        return register


_STATE: _State | None = None


def _env_list(var: str) -> list[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def _dist_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _describe(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" ({tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _strict_from_env() -> bool:
    return os.environ.get("LMCOMPOSE_STRICT_PLUGINS", "").lower() in {"1", "true", "yes"}


def _state(strict: bool | None = None) -> _State:
    global _STATE
    if _STATE is None:
        state = _State(_strict_from_env() if strict is None else strict)
        state.load()
        _STATE = state
    return _STATE


def load_plugins(strict: bool | None = None) -> None:
    """Load built-in and entry-point plugins (once per process)."""
    _state(strict)


def reset_plugins() -> None:
    """Forget every loaded plugin; the next call loads them again (used by tests)."""
    global _STATE
    _STATE = None


def get_plugin_manager() -> pluggy.PluginManager:
    return _state().pm


def plugin_infos() -> list[PluginInfo]:
    """Every plugin seen: loaded ones and the ones that failed (``error`` set)."""
    state = _state()
    # Registries are built here too, so a plugin whose hook raises shows as failed.
    for kind in ("interventions", "metrics", "datasets", "architectures"):
        _registry(kind)
    return sorted(state.infos.values(), key=lambda i: (not i.builtin, i.name))


def register_plugin(plugin: object, name: str, distribution: str = "test-plugin") -> None:
    """Register an in-process plugin object (tests, notebooks). Undo with unregister_plugin."""
    _state().add(plugin, name, distribution, "0", builtin=False)
    if _STATE is not None and _STATE.infos[name].error:
        raise PluginLoadError(_STATE.infos[name].error)


def unregister_plugin(name: str) -> None:
    _state().remove(name)


_KINDS = {
    "interventions": ("register_interventions", "intervention", "See `lmcompose list interventions`."),
    "metrics": ("register_metrics", "metric", "See `lmcompose list metrics`."),
    "datasets": ("register_datasets", "dataset", "See `lmcompose list datasets`."),
    "architectures": (
        "register_architectures",
        "architecture",
        "A plugin can add one with the register_architectures hook.",
    ),
}
#: what each registry's entries are (checked when registered, or when a lazy one is loaded)
_BASES = {
    "interventions": ("lmcompose.api:Intervention", False),
    "metrics": ("lmcompose.api:Metric", False),
    "datasets": ("lmcompose.api:EditDataset|TextCorpus", False),
    "architectures": ("lmcompose.models.arch:ArchSpec", True),
}


def _registry(kind: str) -> Registry[object]:
    state = _state()
    if kind not in state.registries:
        hook_name, singular, hint = _KINDS[kind]
        base, instances = _BASES[kind]
        state.registries[kind] = state.collect(hook_name, Registry(singular, hint, base, instances))
    return state.registries[kind]


# Each registry hands out only what its base admits (Registry.add and Registry.get check it):
# the casts say which base that is.
def get_interventions() -> Registry[type[Intervention]]:
    return cast("Registry[type[Intervention]]", _registry("interventions"))


def get_metrics() -> Registry[type[Metric]]:
    return cast("Registry[type[Metric]]", _registry("metrics"))


def get_datasets() -> Registry[type[EditDataset] | type[TextCorpus]]:
    return cast("Registry[type[EditDataset] | type[TextCorpus]]", _registry("datasets"))


def get_architectures() -> Registry[ArchSpec]:
    return cast("Registry[ArchSpec]", _registry("architectures"))


def register_cli_commands(app: object) -> None:
    """Let plugins add commands to the CLI app (the register_commands hook)."""
    state = _state()
    for impl in state.pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(**{k: app for k in impl.argnames})
        except Exception as exc:
            info = state.infos.get(impl.plugin_name)
            if info is None:
                raise
            state.fail(info, f"register_commands raised {_describe(exc)}")


def torch_imported() -> bool:
    """True if torch has been imported in this process (startup-cost checks)."""
    return "torch" in sys.modules


def _notify(hook_name: str, **kwargs: object) -> None:
    """Call an event hook on every plugin; a plugin whose hook raises is reported once
    (a warning naming it and its distribution, fatal with --strict) and not called again
    in this process. Events come after the data is written, so nothing is lost."""
    state = _state()
    caller = getattr(state.pm.hook, hook_name)
    for impl in caller.get_hookimpls():
        info = state.infos.get(impl.plugin_name)
        if info is not None and info.error:
            continue
        try:
            impl.function(**{k: kwargs[k] for k in impl.argnames})
        except Exception as exc:
            if info is None:
                raise
            state.fail(info, f"{hook_name} raised {_describe(exc)}")


def notify_row_written(row: Mapping[str, object], run: RunInfo) -> None:
    """Tell plugins that ``row`` was appended to ``run``'s results.jsonl (row_written hook)."""
    _notify("row_written", row=row, run=run)


def notify_run_closed(run: RunInfo, status: str) -> None:
    """Tell plugins that a command stopped writing ``run`` (run_closed hook)."""
    _notify("run_closed", run=run, status=status)
