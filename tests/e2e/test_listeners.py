"""`aioreconcile run` as a process: its two listeners, what each serves, what neither shows
(credentials), and what 500 stalled connections cost it (memory and descriptors)."""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import yaml
from anyio.abc import Process

from aioreconcile.testing.controller import run_argv
from aioreconcile.testing.pytest_plugin import Kube
from tests.e2e.test_run_command import _free_port, _get, _wait

pytestmark = pytest.mark.integration

TOKEN = "ghp_l1stener-t0ken-n0where"
SECRET_ENV = "LISTENER_TEST_SECRET"


@dataclass
class Controller:
    process: Process
    hooks: str  # base URL of the webhook listener
    ops: str  # base URL of the operational listener
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


@asynccontextmanager
async def controller(
    kube: Kube, namespace: str, tmp_path: Path, *extra: str
) -> AsyncIterator[Controller]:
    dead = _free_port()  # nobody listens: the sync's fetch fails and its error is in /status
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "syncs": [
                    {
                        "name": "secret-source",
                        "source": {
                            "url": f"http://x-access-token:{TOKEN}@127.0.0.1:{dead}/app.git",
                            "interval": "1h",
                        },
                    }
                ],
                "receivers": [
                    {
                        "name": "github",
                        "provider": "github",
                        "secretEnv": SECRET_ENV,
                        "syncs": ["secret-source"],
                    }
                ],
            }
        )
    )
    port, ops_port = _free_port(), _free_port()
    log = tmp_path / "controller.log"
    command = run_argv(
        kubeconfig=kube.kubeconfig,
        port=port,
        ops_port=ops_port,
        cache_dir=tmp_path / "cache",
        config=config,
        namespace=namespace,
        extra_args=extra,
    )
    env = {**os.environ, SECRET_ENV: "listener-webhook-secret"}
    with log.open("w") as log_file:
        process = await anyio.open_process(
            command, stdout=subprocess.DEVNULL, stderr=log_file, env=env
        )
    running = Controller(process, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops_port}", log)
    try:
        await _wait(lambda: _get(f"{running.ops}/readyz")[0] == 200, seconds=30, what="/readyz")
        yield running
    finally:
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(30):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_status_and_metrics_are_only_on_the_ops_listener_and_show_no_token(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    async with controller(kube, namespace, tmp_path) as running:
        await _wait(
            lambda: b"FetchFailed" in _get(f"{running.ops}/status")[1],
            seconds=30,
            what="the fetch to fail",
        )
        for path in ("/status", "/metrics", "/healthz", "/readyz"):
            assert _get(f"{running.ops}{path}")[0] == 200, path
            assert _get(f"{running.hooks}{path}")[0] == 404, path
        status_code, status = _get(f"{running.ops}/status")
        cli = await anyio.run_process(
            [sys.executable, "-m", "aioreconcile", "status", "--url", running.ops, "-o", "json"],
            check=False,
        )
        table = await anyio.run_process(
            [sys.executable, "-m", "aioreconcile", "status", "--url", running.ops], check=False
        )

    assert status_code == 200
    (sync,) = json.loads(status)["syncs"]
    assert sync["url"] == f"http://127.0.0.1:{sync['url'].rsplit(':', 1)[1]}"
    assert sync["reason"] == "FetchFailed"
    assert "127.0.0.1" in sync["lastError"]
    assert TOKEN not in status.decode()
    assert cli.returncode == 0, cli.stderr
    assert table.returncode == 0, table.stderr
    assert TOKEN not in (cli.stdout + cli.stderr + table.stdout + table.stderr).decode()
    assert TOKEN not in running.log.read_text()


async def _stall(port: int, kind: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if kind == "head":
        writer.write(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: pu")
    elif kind == "body":
        writer.write(
            b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100000\r\n\r\n{"ref": "refs/heads/'
        )
    await writer.drain()
    return reader, writer


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before closing; ``(reset)`` if it reset, ``(open)`` if it did not
    close within 10 s."""
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionError:
        return b"(reset)"
    except TimeoutError:
        return b"(open)"


async def test_500_stalled_connections_hold_neither_memory_nor_descriptors(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    timeouts = ("--header-timeout", "2", "--body-timeout", "2", "--max-connections", "256")
    async with controller(kube, namespace, tmp_path, *timeouts) as running:
        port = int(running.hooks.rsplit(":", 1)[1])
        await anyio.sleep(1)
        fds_before, rss_before = running.open_fds(), running.rss_kib()

        kinds = ["silent", "head", "body"] * 167  # 501
        stalled = [await _stall(port, kind) for kind in kinds[:500]]
        await anyio.sleep(0.5)
        fds_stalled, rss_stalled = running.open_fds(), running.rss_kib()

        answers = await asyncio.gather(*(_answer(reader) for reader, _ in stalled))
        for _, writer in stalled:
            writer.close()
        await anyio.sleep(1)
        fds_after, rss_after = running.open_fds(), running.rss_kib()
        # The listener still serves.
        prompt = _get(f"{running.hooks}/anything")
        log = running.log.read_text()

    timed_out = sum(1 for a in answers if a.startswith(b"HTTP/1.1 408 "))
    closed = sum(1 for a in answers if a in (b"", b"(reset)"))
    figures = {
        "fds": (fds_before, fds_stalled, fds_after),
        "rss_kib": (rss_before, rss_stalled, rss_after),
        "answered_408": timed_out,
        "closed_without_answer": closed,
        "still_open_after_10_s": answers.count(b"(open)"),
    }
    print(f"500 stalled connections: {figures}")
    # At most --max-connections are held, each for at most the timeouts; then all are gone.
    assert fds_stalled - fds_before <= 256 + 8, figures
    assert fds_after - fds_before <= 8, figures
    assert rss_stalled - rss_before < 32 * 1024, figures
    assert rss_after - rss_before < 32 * 1024, figures
    # Every connection ended: a partial head or body got its 408, the rest were closed.
    assert timed_out + closed == 500, figures
    assert timed_out >= 150, figures
    assert prompt[0] == 404
    assert "Traceback" not in log
    assert '"level":"error"' not in log
