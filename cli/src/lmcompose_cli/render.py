"""What the commands print: the consoles, progress bars, and every rich table (results,
reports, plugins, registries, models). Nothing here imports torch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from lmcompose.api import Progress, config_fields, field_help
from lmcompose.composability import row_step
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from lmcompose.engine.plan import PlanCounts
    from lmcompose.engine.progress import ProgressEvent
    from lmcompose.plugins import PluginInfo
    from lmcompose.registry import Entry
    from lmcompose.reports.study import StudyReport
    from lmcompose.reports.sweep import Report
    from rich.progress import TaskID

    from lmcompose_cli.registry_file import RegistryEntry

console = Console()
err_console = Console(stderr=True)


class RichProgress(Progress):
    """rich progress bars for long work."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RP

        self.rp = RP(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        task_id = self.rp.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            self.rp.advance(task_id, n)

        try:
            yield advance
        finally:
            self.rp.remove_task(task_id)

    def note(self, message: str) -> None:
        err_console.print(f"[yellow]note:[/] {message}", highlight=False, soft_wrap=True)


class StudyProgress(RichProgress):
    """The study's own bar (states done, elapsed, ETA) above the steps' bars; when stderr
    is not a terminal (nohup, Slurm), one log line per finished model state instead."""

    def __init__(self) -> None:
        super().__init__()
        self.tty = err_console.is_terminal
        self._bar: TaskID | None = None

    def on_event(self, event: ProgressEvent) -> None:
        from lmcompose.engine.progress import format_duration

        if not self.tty:
            err_console.print(f"[study] {event.line()}", markup=False, highlight=False, soft_wrap=True)
            return
        eta = format_duration(event.eta_s) if event.eta_s is not None else "?"
        text = f"study: {event.done}/{event.total} states, ETA {eta}"
        if self._bar is None:
            self._bar = self.rp.add_task(text, total=event.total)
        self.rp.update(self._bar, completed=event.done, description=text)


def quiet_transformers() -> None:
    """transformers' logging and progress bars off: the commands draw their own."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:  # save_pretrained's "Writing model shards" bar
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        pass


def print_line(text: str) -> None:
    """One line of plain output (no markup, no highlighting, never wrapped)."""
    console.print(text, highlight=False, soft_wrap=True)


RESULT_COLUMNS = ("perplexity", "avg_bits", "sparsity", "edit_success", "generalization", "locality", "flops")


def print_rows(rows: Sequence[Mapping[str, object]]) -> None:
    table = Table(title="results")
    table.add_column("pos", justify="right")
    table.add_column("step")
    table.add_column("strength", justify="right")
    present = [c for c in RESULT_COLUMNS if any(r.get(c) is not None for r in rows)]
    for c in present:
        table.add_column(c, justify="right")
    table.add_column("step s", justify="right")
    for r in rows:
        column = row_step(r)
        step = f"{column['name']}" + (" (again)" if column.get("recompress") else "") if column else "base"
        cells = [str(r["position"]), step, "" if r.get("strength") is None else str(r["strength"])]
        for c in present:
            v = r.get(c)
            cells.append("" if v is None else (f"{v:.3g}" if c == "flops" else f"{v:.4g}"))
        cells.append(f"{r.get('elapsed_s', 0):.1f}")
        table.add_row(*cells)
    console.print(table)


def print_report(report: Report | StudyReport, tables: int | None = None) -> None:
    """The report's tables (the same strings as in report.md) as rich tables (the first
    ``tables`` of them when given: a study's Table 1)."""
    for t in report.tables[:tables]:
        # escaped: a caption's "[lo, hi]" is text, not rich markup
        table = Table(title=escape(t.title), caption=escape(t.caption), caption_justify="left")
        for i, col in enumerate(t.columns):
            table.add_column(escape(col), justify="left" if i == 0 else "right", overflow="fold")
        for row in t.rows:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
    for note in report.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)


def counts_text(counts: Mapping[str, PlanCounts]) -> str:
    """A study's work counts: as planned, as separate sweeps, and with every cell on its own."""

    def one(pc: PlanCounts) -> str:
        return f"{pc.edits} edits + {pc.compressions} compressions, {pc.evaluations} evaluations"

    return (
        f"model states: this study {one(counts['study'])}; as separate sweeps {one(counts['separate_sweeps'])}; "
        f"every cell on its own {one(counts['independent_cells'])}"
    )


def print_plugins(infos: Sequence[PluginInfo], provided: Mapping[str, list[str]]) -> None:
    table = Table(title="lmcompose plugins")
    for col in ("name", "distribution", "version"):
        table.add_column(col, no_wrap=True)
    table.add_column("hooks", overflow="fold")
    table.add_column("status", overflow="fold")
    for info in infos:
        status = "[red]failed: " + info.error + "[/]" if info.error else "[green]loaded[/]"
        table.add_row(
            info.name,
            info.distribution,
            info.version,
            ", ".join(h.removeprefix("register_") for h in info.hooks),
            status,
        )
    console.print(table)
    for dist, things in sorted(provided.items()):
        console.print(f"[bold]{dist}[/] provides: {', '.join(sorted(things))}", highlight=False, soft_wrap=True)


def print_available(entries: Sequence[RegistryEntry]) -> None:
    table = Table(title="plugins in registry.yaml")
    for col in ("name", "kind", "distribution"):
        table.add_column(col, no_wrap=True)
    table.add_column("installed", no_wrap=True)
    table.add_column("summary", overflow="fold")
    for e in entries:
        status = f"[green]{e.installed_version}[/]" if e.installed_version else "not installed"
        table.add_row(e.name, e.kind, e.distribution, status, e.summary)
    console.print(table)


def _default(config_cls: type, name: str, f: dataclasses.Field[object]) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {name} of {config_cls.__name__} has no default; a method's config needs one")


def _entry_details(kind: str, entry: Entry[object]) -> list[str]:
    """The ``fields`` cell of ``lmcompose list KIND``: what the loaded class declares (the
    registry checked that it is one of KIND's: an Intervention or Metric subclass, an ArchSpec)."""
    from lmcompose.api import Intervention, Metric
    from lmcompose.models.arch import ArchSpec

    obj = entry.load()
    detail = []
    if kind == "interventions" and isinstance(obj, type) and issubclass(obj, Intervention):
        knob = obj.strength
        detail.append(f"kind: {obj.kind}; strength: {knob.field} in {knob.describe()}" if knob else f"kind: {obj.kind}")
    if kind == "architectures" and isinstance(obj, ArchSpec):
        detail.append(f"layers: {obj.layers}; mlp out: {obj.mlp_out}")
    config_cls = getattr(obj, "Config", None)  # Intervention.Config, Metric.Config
    if config_cls is not None and kind in ("interventions", "metrics"):
        if not isinstance(config_cls, type):
            raise TypeError(f"{kind} {entry.name!r}: Config is {config_cls!r}, not a dataclass")
        for name, f in config_fields(config_cls).items():
            detail.append(f"{name}={_default(config_cls, name, f)!r}: {field_help(f)}")
    if kind == "metrics" and isinstance(obj, type) and issubclass(obj, Metric):
        detail.insert(0, "keys: " + ", ".join(obj.keys))
    if kind == "datasets":
        detail.append(f"kind: {entry.extra.get('kind', getattr(obj, 'kind', 'edits'))}")
    return detail


class Listing(Protocol):
    """A registry as ``lmcompose list`` reads it: its entries."""

    def entries(self) -> Sequence[Entry[object]]: ...


def print_registry(kind: str, registry: Listing) -> None:
    table = Table(title=kind)
    table.add_column("name", style="bold")
    table.add_column("from")
    table.add_column("what", overflow="fold")
    table.add_column("fields", overflow="fold")
    for entry in registry.entries():
        table.add_row(entry.name, entry.distribution, entry.summary, "\n".join(_entry_details(kind, entry)))
    console.print(table)


def print_models(rows: Sequence[tuple[str, str, str, str]]) -> None:
    table = Table(title="named models")
    for col in ("name", "what", "format", "status"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
