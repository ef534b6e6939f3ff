"""The live view: one line per event the controller reported, printed as it happens.

An append-only stream rather than a redrawn screen: it reads the same in a terminal, in tmux's
scrollback and in a CI log, and nothing the user saw disappears.
"""

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from aioreconcile.demo import sample
from aioreconcile.demo.events import (
    CommitApplied,
    CommitFailed,
    DriftHealed,
    Event,
)
from aioreconcile.testing.jaeger import UI_ASSETS_ENV


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _trace(trace_id: str | None) -> str:
    return trace_id or "(tracing off)"


def describe(event: Event, *, subject: Callable[[str], str]) -> str | None:
    """The rich markup line for one event (None: not shown)."""
    clock = event.at.strftime("%H:%M:%S")
    if isinstance(event, CommitApplied):
        title = escape(subject(event.sha))
        how = (
            f"webhook→applied {_ms(event.latency_ms)}"
            if event.latency_ms is not None
            else "first sync (poll at start)"
        )
        return (
            f"[dim]{clock}[/] [bold green]commit [/] [yellow]{event.sha[:7]}[/] {title}\n"
            f"          created {event.created}, configured {event.configured}, "
            f"pruned {event.pruned}, unchanged {event.unchanged}; {how}; "
            f"trace [cyan]{_trace(event.trace_id)}[/]"
        )
    if isinstance(event, CommitFailed):
        sha = event.sha or ""
        title = escape(subject(sha)) if sha else ""
        return (
            f"[dim]{clock}[/] [bold red]failed [/] [yellow]{sha[:7]}[/] {title}\n"
            f"          [red]{escape(event.reason)}[/]: {escape(event.error)}\n"
            f"          pruned {event.pruned} (nothing is pruned when a commit fails); "
            f"trace [cyan]{_trace(event.trace_id)}[/]"
        )
    if isinstance(event, DriftHealed):
        writers = ", ".join(event.writers) or "unknown writer"
        fields = ", ".join(event.fields) or "-"
        linked = event.linked_trace_id or "-"
        return (
            f"[dim]{clock}[/] [bold magenta]healed [/] {escape(event.object)} "
            f"changed by [bold]{escape(writers)}[/] ({escape(fields)})\n"
            f"          detected→healed {_ms(event.latency_ms)}; trace "
            f"[cyan]{_trace(event.trace_id)}[/], links commit trace [cyan]{linked}[/]"
        )
    return None


def show(console: Console, event: Event, *, subject: Callable[[str], str]) -> None:
    line = describe(event, subject=subject)
    if line is not None:
        console.print(line, highlight=False)


def banner(
    console: Console,
    *,
    clone: Path,
    kubeconfig: Path,
    jaeger_url: str | None,
    webhook_url: str,
    log_path: Path,
    workdir: Path,
) -> None:
    """What runs where, and what to try: the first thing a newcomer reads."""
    exports = [f"export KUBECONFIG={kubeconfig}"]
    if jaeger_url:
        exports.append(f"export JAEGER_URL={jaeger_url}")
    try_lines = [
        f"cd {clone}",
        f"$EDITOR {sample.SYNC_PATH}/settings.yaml    # change GREETING",
        'git commit -am "Greet differently"         # the hook pushes and signs a webhook',
        f"kubectl -n {sample.NAMESPACE} edit configmap {sample.SETTINGS_CONFIGMAP}"
        "   # a foreign write: healed at once",
        f"kubectl -n {sample.NAMESPACE} get deploy,svc,cm",
    ]
    if jaeger_url:
        try_lines.append("aioreconcile trace $(git rev-parse HEAD)   # the commit's span tree")
    body = "\n".join(
        [
            "[bold]In another shell:[/]",
            *(f"  {escape(line)}" for line in exports),
            "",
            "[bold]Then try:[/]",
            *(f"  {escape(line)}" for line in try_lines),
            "",
            f"[dim]webhook receiver {webhook_url}; controller log {log_path}; "
            + (_jaeger(jaeger_url) if jaeger_url else "")
            + "Ctrl-C stops everything (your clone stays).[/]",
            f"[dim]working files in {workdir} (removed on exit)[/]",
        ]
    )
    console.print(Panel(body, title="aioreconcile demo is running", expand=False))


def _jaeger(url: str) -> str:
    """Jaeger built from its Go module serves no UI unless given a jaeger-ui build."""
    if os.environ.get(UI_ASSETS_ENV):
        return f"Jaeger UI {url}; "
    return f"Jaeger query API {url} (its UI needs ${UI_ASSETS_ENV}, see docs/tracing.md); "


def summary(console: Console, rows: Sequence[tuple[str, str, str, str, str]]) -> None:
    """The guided tour's table: step, what happened, latency, trace id, result."""
    table = Table(title="aioreconcile demo --script", title_justify="left")
    for name in ("step", "what happened", "latency", "trace id", "result"):
        table.add_column(name, no_wrap=name in ("latency", "trace id", "result"))
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
