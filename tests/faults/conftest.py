"""Faults on the real parts: ``aioreconcile run`` as a subprocess (so it can be killed with
SIGKILL), a ``git daemon`` that can be killed or frozen, ``FaultProxy`` in front of the
apiserver or the git daemon, and the real control plane (shared, or private where a test needs
other apiserver flags).

Each scenario prints ``FAULT-FIGURE <name> <seconds>`` lines: the convergence time after its
fault, copied into docs/reliability.md.
"""

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from aioreconcile.testing.controller import controller_process as run_controller
from aioreconcile.testing.controller import github_push
from aioreconcile.testing.controlplane import free_port
from aioreconcile.testing.faults import kubeconfig_via
from aioreconcile.testing.processes import ManagedProcess, git_daemon
from tests.git.conftest import Upstream, served_root, upstream

__all__ = ["kubeconfig_via", "served_root", "upstream"]

SECRET = "faults-webhook-secret"
SECRET_ENV = "FAULTS_WEBHOOK_SECRET"


def figure(name: str, seconds: float) -> None:
    """One measured convergence time, in a line the docs copy from (``pytest -s``)."""
    print(f"FAULT-FIGURE {name} {seconds:.2f}")


def config_map(name: str, namespace: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


def manifests(*docs: dict[str, Any]) -> dict[str, str]:
    return {"deploy/objects.yaml": yaml.safe_dump_all(docs)}


def counter(metrics: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when absent)."""
    total = 0.0
    for line in metrics.splitlines():
        found = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if not found:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', found[1] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(found[2])
    return total


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, seconds: float, what: str, every: float = 0.1
) -> float:
    """Poll ``check`` until true; return the seconds it took; fail naming ``what``."""
    began = time.monotonic()
    while not await check():
        if time.monotonic() - began > seconds:
            pytest.fail(f"timed out after {seconds:.0f} s waiting for {what}")
        await anyio.sleep(every)
    return time.monotonic() - began


@dataclass
class GitServer:
    """A ``git daemon`` under our control: ``process.kill9()``, ``pause()``, ``start()``."""

    process: ManagedProcess
    port: int

    @property
    def base(self) -> str:
        return f"git://127.0.0.1:{self.port}/"

    async def restart(self) -> None:
        self.process.start()
        await self.process.wait_ready(self._listening, timeout=10, what="listening")

    async def _listening(self) -> bool:
        try:
            stream = await anyio.connect_tcp("127.0.0.1", self.port)
        except OSError:
            return False
        await stream.aclose()
        return True


@pytest.fixture
async def git_server(served_root: Path, tmp_path: Path) -> AsyncIterator[GitServer]:
    port = free_port()
    process = git_daemon(served_root, port=port, log_path=tmp_path / "git-daemon.log")
    server = GitServer(process, port)
    await server.restart()
    try:
        yield server
    finally:
        process.resume()
        await process.stop(grace=5)


@dataclass
class Controller:
    """``aioreconcile run`` as a child process, with its listeners and its JSON log."""

    process: ManagedProcess
    ops: str  # http://127.0.0.1:<port>: /status, /metrics, /readyz
    hooks: str  # http://127.0.0.1:<port>/hooks/
    repository_url: str
    sync: str  # the one sync's name

    async def start(self) -> float:
        """Start (again: same config, ports and cache) and return seconds until /readyz."""
        self.process.start()
        return await self.process.wait_ready(
            lambda: self._ready(), timeout=60, what="ready (/readyz)"
        )

    async def _ready(self) -> bool:
        return (await _get(f"{self.ops}/readyz"))[0] == 200

    async def status(self) -> dict[str, Any]:
        code, body = await _get(f"{self.ops}/status")
        assert code == 200, f"/status answered {code}"
        return next(s for s in json.loads(body)["syncs"] if s["name"] == self.sync)

    async def metrics(self) -> str:
        code, body = await _get(f"{self.ops}/metrics")
        assert code == 200, f"/metrics answered {code}"
        return body.decode()

    async def applied(self, sha: str) -> bool:
        try:
            state = await self.status()
        except (AssertionError, OSError):
            return False
        return bool(state["lastAppliedRevision"] == sha)

    def log(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.process.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
        return lines

    async def push(self, sha: str, *, before: str = "0" * 40) -> int:
        """A signed GitHub push delivery naming ``sha``; returns the HTTP status."""
        body, headers = github_push(SECRET, clone_url=self.repository_url, sha=sha, before=before)
        request = urllib.request.Request(
            f"{self.hooks}github",
            data=body,
            method="POST",
            headers=headers,
        )

        def send() -> int:
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return int(response.status)
            except urllib.error.HTTPError as e:
                return e.code

        return await anyio.to_thread.run_sync(send)


async def _get(url: str) -> tuple[int, bytes]:
    def get() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as e:
            return e.code, b""
        except OSError:
            return 0, b""

    return await anyio.to_thread.run_sync(get)


def sync_config(
    url: str,
    namespace: str,
    *,
    interval: str = "1h",
    timeout: str = "60s",
    **extra: Any,
) -> dict[str, Any]:
    """One sync following ``url``'s main at ``deploy/``, and a GitHub receiver. The sync is
    named after the repository: syncs of one name in one cluster share their objects' label,
    and a sync with no inventory yet rebuilds it from that label, cluster-wide."""
    name = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    return {
        "syncs": [
            {
                "name": name,
                "source": {
                    "url": url,
                    "ref": "main",
                    "path": "deploy",
                    "interval": interval,
                    "timeout": timeout,
                },
                "targetNamespace": namespace,
                **extra,
            }
        ],
        "receivers": [
            {"name": "github", "provider": "github", "secretEnv": SECRET_ENV, "syncs": [name]}
        ],
    }


@pytest.fixture
def controller_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Controller]]:
    """Make (not start) ``aioreconcile run`` children; every one is killed at the end."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    made: list[Controller] = []

    def make(
        config: dict[str, Any],
        *,
        kubeconfig: Path,
        namespace: str,
        cache_dir: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> Controller:
        index = len(made)
        made_process = run_controller(
            config,
            kubeconfig=kubeconfig,
            namespace=namespace,
            workdir=tmp_path,
            name=f"controller-{index}",
            cache_dir=cache_dir,
            extra_args=extra_args,
        )
        controller = Controller(
            made_process.process,
            ops=made_process.ops,
            hooks=made_process.hooks,
            repository_url=config["syncs"][0]["source"]["url"],
            sync=config["syncs"][0]["name"],
        )
        made.append(controller)
        return controller

    try:
        yield make
    finally:
        for controller in made:
            controller.process.resume()
            controller.process.kill_now()


def commit_many(repo: Upstream, docs: list[dict[str, Any]], message: str) -> str:
    """Replace ``deploy/`` with ``docs`` (one file) and commit; returns the SHA."""
    return repo.commit(manifests(*docs), message)


@asynccontextmanager
async def paused(process: ManagedProcess) -> AsyncIterator[None]:
    """SIGSTOP for the block; SIGCONT however it ends."""
    process.pause()
    try:
        yield
    finally:
        process.resume()
