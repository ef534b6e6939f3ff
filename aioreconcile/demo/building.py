"""The first-run build of the real cluster binaries, shown as a progress display.

``toolchain.ensure_built`` runs the builder and hands over its ``[testenv]`` lines; this module
turns them into one rich progress row per component: what is being built, how long it took the
last time on this machine (recorded here in the cache) or, before any build, the cold times
measured in docs/testenv.md, and that the result is cached afterwards.
"""

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import orjson
from rich.console import Console
from rich.progress import (
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from aioreconcile.testing import toolchain

TIMES_FILE: Final = "build-times.json"
# Cold builds on 2 cores (docs/testenv.md, "Measured"): a first guess before any build here.
DOCUMENTED_S: Final = {"etcd": 90.0, "kube-apiserver": 445.0, "helm": 125.0, "jaeger": 527.0}
_BUILDING: Final = re.compile(r"\[testenv\] (?P<component>[\w-]+): building")
_BUILT: Final = re.compile(r"\[testenv\] (?P<component>[\w-]+): built in (?P<seconds>\d+) s")


def times_path() -> Path:
    return toolchain.cache_root() / TIMES_FILE


def recorded_times() -> dict[str, float]:
    """Seconds each component's last build took here, where known."""
    try:
        document = orjson.loads(times_path().read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    if not isinstance(document, dict):
        return {}
    return {str(k): float(v) for k, v in document.items() if isinstance(v, (int, float))}


def record_time(component: str, seconds: float) -> None:
    times = recorded_times() | {component: seconds}
    path = times_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(times, option=orjson.OPT_INDENT_2))


def expectation(component: str, recorded: dict[str, float]) -> str:
    """How long to expect, and where that figure comes from."""
    if component in recorded:
        return f"took {recorded[component]:.0f} s last time here"
    documented = DOCUMENTED_S.get(component)
    if documented is None:
        return "first build"
    return f"first build; about {documented:.0f} s on 2 cores (docs/testenv.md)"


class BuildProgress:
    """Consumes the builder's lines; one progress row per component."""

    def __init__(self, console: Console, components: Sequence[str]) -> None:
        self.console = console
        self.recorded = recorded_times()
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.rows: dict[str, TaskID] = {}
        self.started: dict[str, float] = {}
        self.components = list(components)

    def __enter__(self) -> "BuildProgress":
        names = ", ".join(self.components)
        self.console.print(
            f"[bold]Building the real cluster binaries from Go modules:[/] {names}\n"
            f"  once per machine; cached afterwards in {toolchain.cache_root()} "
            "(a second `aioreconcile demo` starts in seconds)"
        )
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def line(self, text: str) -> None:
        if match := _BUILDING.search(text):
            component = match["component"]
            self.started[component] = time.monotonic()
            self.rows[component] = self.progress.add_task(
                f"building [bold]{component}[/] ({expectation(component, self.recorded)})",
                total=1,
            )
        elif match := _BUILT.search(text):
            component = match["component"]
            seconds = float(match["seconds"])
            record_time(component, seconds)
            row = self.rows.get(component)
            if row is not None:
                self.progress.update(
                    row,
                    completed=1,
                    description=f"built [bold]{component}[/] in {seconds:.0f} s (cached now)",
                )
        elif "error" in text:
            self.progress.console.print(text, markup=False, highlight=False)


async def ensure_built(console: Console, components: Sequence[str]) -> None:
    """Build what is missing with the progress display; nothing is shown when all is cached."""
    if not toolchain.missing(components):
        return
    with BuildProgress(console, toolchain.missing(components)) as progress:
        await toolchain.ensure_built(components, progress=progress.line)
