"""``aioreconcile run`` as its own process, as users run it, for the benchmarks that measure it
from outside: its config file, JSON logs at info on stderr (to a file), both listeners on
loopback, its CPU time read from /proc (children included: the ``git`` it runs).

bench.drift and bench.push start theirs with a fixed config; this one takes any config and
environment (bench.webhook's many syncs, bench.tracing's OTLP variables).
"""

import os
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from aioreconcile.testing.controller import controller_process
from aioreconcile.testing.processes import ManagedProcess

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Controller:
    process: ManagedProcess
    pid: int
    port: int  # --listen: the webhooks
    ops_port: int  # --ops-listen: /status, /metrics

    @property
    def hooks(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def cpu_seconds(self) -> float:
        """utime + stime of the controller and of its waited-for children (git, kustomize)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / _TICKS

    def own_cpu_seconds(self) -> float:
        """CPU time of the controller process alone (all its threads, exited ones too; its
        children, git, left out), in nanoseconds' resolution: Linux's CPU clock of another
        process (``clock_getcpuclockid``; CPUCLOCK_SCHED of the pid, ``((~pid) << 3) | 2``),
        where /proc's utime + stime count 10 ms ticks, ~2 % of a 0.5 s push each reading."""
        return time.clock_gettime(((~self.pid) << 3) | 2)

    async def status(self, session: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
        async with session.get(f"http://127.0.0.1:{self.ops_port}/status") as response:
            document: dict[str, Any] = await response.json()
        return {s["name"]: s for s in document["syncs"]}

    async def metric(self, session: aiohttp.ClientSession, name: str, labels: str = "") -> float:
        """The sum of the samples of ``name`` whose label set contains ``labels``."""
        async with session.get(f"http://127.0.0.1:{self.ops_port}/metrics") as response:
            text = await response.text()
        pattern = rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$"
        return sum(float(v) for ls, v in re.findall(pattern, text, re.M) if labels in ls)

    async def wait_applied(
        self,
        session: aiohttp.ClientSession,
        revisions: Mapping[str, str],
        *,
        limit_s: float,
        poll_s: float = 0.05,
    ) -> float:
        """Poll /status until each named sync's last applied revision is the one given."""
        started = time.perf_counter()
        while True:
            if not self.process.running():
                raise SystemExit(f"the controller exited:\n{self.process.log_tail()}")
            try:
                states = await self.status(session)
            except (aiohttp.ClientError, OSError):
                states = {}
            if states and all(
                states.get(name, {}).get("lastAppliedRevision") == sha
                for name, sha in revisions.items()
            ):
                return time.perf_counter() - started
            if time.perf_counter() - started > limit_s:
                seen = [(n, s.get("lastAppliedRevision")) for n, s in states.items()]
                raise SystemExit(
                    f"not applied after {limit_s:.0f} s: {seen}\n{self.process.log_tail()}"
                )
            await anyio.sleep(poll_s)

    async def wait_quiet(self, *, window_s: float = 0.5, cpu_s: float = 0.02) -> None:
        """Until the controller used less than ``cpu_s`` of CPU over ``window_s``: the work a
        phase queued (coalesced reconciles, the span export) is done before the next starts."""
        before = self.cpu_seconds()
        while True:
            await anyio.sleep(window_s)
            now = self.cpu_seconds()
            if now - before < cpu_s:
                return
            before = now


@asynccontextmanager
async def run_controller(
    config: Mapping[str, Any],
    *,
    kubeconfig: Path,
    workdir: Path,
    namespace: str,
    name: str = "controller",
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Controller]:
    """``aioreconcile run --config`` with ``config``; its log (stderr) in ``workdir/name.log``.

    ``env`` is added to this process's environment for the child only (secrets and OTEL_*
    variables reach it the way users give them, never on its argv)."""
    made = controller_process(
        config,
        kubeconfig=kubeconfig,
        namespace=namespace,
        workdir=workdir,
        name=name,
        extra_args=("--log-level", "info"),
        env={**os.environ, **(env or {})},
    )
    process, port, ops_port = made.process, made.port, made.ops_port
    try:
        process.start()  # setpriv execs: the pid is the Python interpreter's
        assert process.pid is not None
        yield Controller(process, process.pid, port, ops_port)
    finally:
        await process.stop(grace=30)
