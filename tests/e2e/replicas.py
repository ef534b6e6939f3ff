"""Start one replica of a leader-elected (or sharded) ``aioreconcile run`` for the e2e tests of
leader election, sharding and the webhook hand-off: an anyio process on loopback ports, its
stderr (the JSON log) in ``<directory>/<identity>.log``, its Git cache in
``<directory>/cache-<identity>``. The argv comes from aioreconcile.testing.controller."""

import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import pytest

from aioreconcile.testing.controller import leader_election_args, run_argv
from aioreconcile.testing.controlplane import free_port
from aioreconcile.testing.pytest_plugin import Kube


@dataclass(frozen=True)
class Started:
    process: anyio.abc.Process
    hooks: int  # the webhook listener's port
    ops: str  # http://127.0.0.1:<ops port>
    log: Path


async def start_replica(
    kube: Kube,
    namespace: str,
    directory: Path,
    identity: str,
    *,
    timings: tuple[float, float, float],
    config: Path | None = None,
    inventory_namespace: str | None = None,
    extra_args: Sequence[str] = (),
) -> Started:
    """``timings`` are the lease duration, renew deadline and retry period, in seconds; the
    Lease lives in ``namespace``. CRD mode unless ``config`` is given."""
    hooks, ops = free_port(), free_port()
    lease_s, renew_s, retry_s = timings
    command = [
        *run_argv(
            kubeconfig=kube.kubeconfig,
            port=hooks,
            ops_port=ops,
            cache_dir=directory / f"cache-{identity}",
            config=config,
            namespace=inventory_namespace,
            extra_args=extra_args,
        ),
        *leader_election_args(
            namespace, identity, lease_s=lease_s, renew_s=renew_s, retry_s=retry_s
        ),
    ]
    log = directory / f"{identity}.log"
    with log.open("w") as log_file:
        process = await anyio.open_process(command, stdout=subprocess.DEVNULL, stderr=log_file)
    return Started(process, hooks, f"http://127.0.0.1:{ops}", log)


async def kill_all(processes: Iterable[anyio.abc.Process]) -> None:
    """kill -9 every process still running and reap it (a test's teardown)."""
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def until(
    check: Callable[[], bool], *, seconds: float, what: str, every: float = 0.02
) -> float:
    """Poll ``check`` every ``every`` s (in a thread: it does blocking HTTP); seconds it took.
    Fails the test after ``seconds``."""
    started = time.monotonic()
    while not await anyio.to_thread.run_sync(check):
        if time.monotonic() - started > seconds:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        await anyio.sleep(every)
    return time.monotonic() - started
