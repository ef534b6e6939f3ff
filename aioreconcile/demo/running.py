"""``aioreconcile demo``: the whole product on an embedded default, in one command.

It composes real parts only: the control plane and Jaeger of ``aioreconcile.testing``, a
``git-daemon`` on loopback, and the controller itself as ``aioreconcile run --config`` in a
child process (its own session, killed with us if we die: ``ManagedProcess``). The view and the
tour read the controller's JSON log, so what they show is what the controller reports.

Everything started lives under one temporary directory removed on exit; only the user's clone
(``--dir``) stays, and a second run serves it again with the user's commits. The idea of a
quick start that is the real product on a throwaway cluster comes from Argo CD's and Flux's
getting-started guides (kind + a sample app repository); here it is one command.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio
import yaml
from rich.console import Console

from aioreconcile.demo import building, gitserving, sample, viewing
from aioreconcile.demo.events import CommitApplied, CommitFailed, Event, LogReader
from aioreconcile.testing.controlplane import ControlPlane, free_port, start_control_plane
from aioreconcile.testing.jaeger import start_jaeger
from aioreconcile.testing.processes import ManagedProcess, StartupError
from aioreconcile.testing.toolchain import ToolchainError

SYNC: Final = "demo"
RECEIVER: Final = "demo"
_READY_TIMEOUT_S: Final = 120.0
_TOOLS: Final = {
    "git": "the sample repository, its server and your clone",
    "kubectl": "the controller renders kustomize with it; the tour and you check the cluster",
}
_FOLLOW_PERIOD_S: Final = 0.02


@dataclass(frozen=True)
class DemoSettings:
    directory: Path
    jaeger: bool = True
    script: bool = False


class DemoError(Exception):
    """The demo could not start or a tour step failed; the message says which and why."""


class EventLog:
    """The events read so far, and a way to wait for one."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = anyio.Event()

    def add(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    def mark(self) -> int:
        return len(self.events)

    async def wait_for(
        self, matches: Callable[[Event], bool], *, since: int = 0, timeout_s: float, what: str
    ) -> Event:
        index = since
        with anyio.move_on_after(timeout_s):
            while True:
                for event in self.events[index:]:
                    if matches(event):
                        return event
                index = len(self.events)
                await self._changed.wait()
        raise DemoError(f"no {what} within {timeout_s:.0f} s")


@dataclass
class Demo:
    """What a running demo offers the view and the tour."""

    clone: Path
    plane: ControlPlane
    controller: ManagedProcess
    events: EventLog
    webhook_url: str
    jaeger_url: str | None
    initial_sha: str


def controller_config(*, repository_url: str, secret_file: Path) -> dict[str, object]:
    """One sync following the sample overlay, one receiver the hook signs for."""
    return {
        "syncs": [
            {
                "name": SYNC,
                "source": {
                    "url": repository_url,
                    "ref": gitserving.BRANCH,
                    "path": sample.SYNC_PATH,
                    # Webhooks drive the demo; the poll is only the fallback.
                    "interval": "10m",
                },
                "prune": True,
                "selfHeal": True,
            }
        ],
        "receivers": [
            {
                "name": RECEIVER,
                "provider": "generic-hmac",
                "secretFile": str(secret_file),
                "syncs": [SYNC],
            }
        ],
    }


def _controller_argv(
    config: Path, *, plane: ControlPlane, port: int, cache: Path, otlp: str | None
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "aioreconcile",
        "run",
        f"--config={config}",
        f"--kubeconfig={plane.kubeconfig}",
        f"--listen=127.0.0.1:{port}",
        f"--ops-listen=127.0.0.1:{free_port()}",
        f"--cache-dir={cache}",
        "--log-level=info",
    ]
    if otlp:
        argv += [f"--otlp-endpoint={otlp}", "--service-name=aioreconcile"]
    return argv


async def _follow(
    process: ManagedProcess, reader: LogReader, sink: Callable[[Event], None]
) -> None:
    """Read the controller's log as it grows and hand each event on; fail if it exits."""
    buffer = b""
    async with await anyio.open_file(process.log_path, "rb") as log:
        while True:
            chunk = await log.read()
            if chunk:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    for event in reader.feed(line.decode(errors="replace")):
                        sink(event)
                continue
            if not process.running():
                raise DemoError(
                    f"the controller exited; last lines of {process.log_path}:\n"
                    f"{process.log_tail()}"
                )
            await anyio.sleep(_FOLLOW_PERIOD_S)


@asynccontextmanager
async def start_demo(
    settings: DemoSettings, console: Console, workdir: Path
) -> AsyncIterator[Demo]:
    """Start everything under ``workdir``; stop it all on exit (the clone stays)."""
    for tool, why in _TOOLS.items():
        if shutil.which(tool) is None:
            raise DemoError(f"{tool} is not on PATH; the demo needs it ({why})")
    needed = ["etcd", "kube-apiserver"] + (["jaeger"] if settings.jaeger else [])
    await building.ensure_built(console, needed)
    began = time.monotonic()
    clone = settings.directory.resolve()
    async with AsyncExitStack() as stack:
        with console.status("starting the control plane (etcd + kube-apiserver)..."):
            plane = await stack.enter_async_context(start_control_plane(workdir / "cluster"))
        jaeger_url = otlp = None
        if settings.jaeger:
            with console.status("starting Jaeger..."):
                jaeger = await stack.enter_async_context(start_jaeger(workdir / "jaeger"))
            # Jaeger 1.76 ignores SIGTERM for the whole 10 s grace; its traces are in memory
            # and go with it anyway, so it gets a short one.
            stack.push_async_callback(lambda: jaeger.process.stop(grace=1.0))
            jaeger_url, otlp = jaeger.query_url, jaeger.otlp_http_endpoint

        served = workdir / "git"
        served.mkdir()
        await anyio.to_thread.run_sync(
            lambda: gitserving.seed_repository(
                served / gitserving.REPOSITORY, work=workdir / "seed", clone=clone
            )
        )
        daemon, base_url = gitserving.git_daemon(served, log_path=workdir / "git-daemon.log")
        stack.push_async_callback(daemon.stop)
        daemon.start()
        await daemon.wait_ready(
            lambda: _answers(base_url + gitserving.REPOSITORY), timeout=30, what="serving"
        )
        repository_url = base_url + gitserving.REPOSITORY
        await anyio.to_thread.run_sync(lambda: gitserving.prepare_clone(clone, url=repository_url))
        secret_file = gitserving.write_secret(clone)
        port = free_port()
        webhook_url = f"http://127.0.0.1:{port}/hooks/{RECEIVER}"
        gitserving.install_hook(
            clone, webhook_url=webhook_url, repository_url=repository_url, secret_file=secret_file
        )
        config = workdir / "controller.yaml"
        config.write_text(
            yaml.safe_dump(
                controller_config(repository_url=repository_url, secret_file=secret_file),
                sort_keys=False,
            )
        )
        controller = ManagedProcess(
            "controller",
            _controller_argv(
                config, plane=plane, port=port, cache=workdir / "git-cache", otlp=otlp
            ),
            log_path=workdir / "controller.log",
            # Spans reach Jaeger within half a second, so `aioreconcile trace` finds them at once.
            env={**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "500"},
        )
        stack.push_async_callback(controller.stop)
        controller.start()

        events = EventLog()
        tasks = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tasks.cancel_scope.cancel)

        def subject_of(sha: str) -> str:
            return gitserving.subject(clone, sha)

        def sink(event: Event) -> None:
            viewing.show(console, event, subject=subject_of)
            events.add(event)

        tasks.start_soon(_follow, controller, LogReader(), sink)
        initial = await anyio.to_thread.run_sync(gitserving.head, clone)
        with console.status("starting the controller and applying the first commit..."):
            first = await events.wait_for(
                lambda e: isinstance(e, CommitApplied | CommitFailed) and e.sha == initial,
                timeout_s=_READY_TIMEOUT_S,
                what=f"reconcile of {initial[:7]} by the controller",
            )
        if isinstance(first, CommitFailed):
            raise DemoError(f"the first commit {initial[:7]} failed: {first.reason}: {first.error}")
        console.print(
            f"[dim]ready in {time.monotonic() - began:.1f} s "
            f"(control plane {plane.timings['control_plane_ready_s']:.1f} s)[/]"
        )
        viewing.banner(
            console,
            clone=clone,
            kubeconfig=plane.kubeconfig,
            jaeger_url=jaeger_url,
            webhook_url=webhook_url,
            log_path=controller.log_path,
            workdir=workdir,
        )
        yield Demo(
            clone=clone,
            plane=plane,
            controller=controller,
            events=events,
            webhook_url=webhook_url,
            jaeger_url=jaeger_url,
            initial_sha=initial,
        )


async def _answers(url: str) -> bool:
    """The daemon serves the repository (``git ls-remote`` succeeds)."""
    result = await anyio.run_process(
        ["git", "ls-remote", "--heads", url],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return result.returncode == 0


_EXPECTED: Final = (DemoError, StartupError, ToolchainError, gitserving.GitError)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return found


async def run(settings: DemoSettings, console: Console) -> int:
    """Run until Ctrl-C (or, with ``script``, through the tour); 0 when all went well."""
    from aioreconcile.demo import touring

    workdir = Path(tempfile.mkdtemp(prefix="aioreconcile-demo-"))
    code = 0
    stopping_since: float | None = None
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with anyio.create_task_group() as tasks:

                async def stop_on_signal() -> None:
                    nonlocal stopping_since
                    async for received in signals:
                        stopping_since = time.monotonic()
                        console.print(
                            f"[dim]{signal.Signals(received).name}: stopping everything...[/]"
                        )
                        tasks.cancel_scope.cancel()
                        return

                async def main() -> None:
                    nonlocal code
                    try:
                        async with start_demo(settings, console, workdir) as demo:
                            if settings.script:
                                code = await touring.tour(demo, console)
                                tasks.cancel_scope.cancel()
                            else:
                                await anyio.sleep_forever()
                    except* _EXPECTED as group:
                        for error in _leaves(group):
                            console.print(
                                f"[bold red]aioreconcile demo:[/] {error}", highlight=False
                            )
                        code = 1
                        tasks.cancel_scope.cancel()

                tasks.start_soon(stop_on_signal)
                tasks.start_soon(main)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    took = f" in {time.monotonic() - stopping_since:.1f} s" if stopping_since else ""
    kept = (
        f"; your clone stays in {settings.directory}"
        if gitserving.is_demo_clone(settings.directory)
        else ""
    )
    console.print(f"[dim]stopped{took}; removed {workdir}{kept}[/]")
    return code
