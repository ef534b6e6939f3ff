"""`aioreconcile run` as a process: status and metrics endpoints, SIGTERM during a large apply."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from kubernetes_asyncio import client

from aioreconcile.testing.controller import run_argv
from aioreconcile.testing.pytest_plugin import Kube
from tests.git.conftest import Upstream

pytestmark = pytest.mark.integration

OBJECTS = 400


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError:
        return 0, b""


async def _wait(check: Callable[[], bool], *, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await anyio.to_thread.run_sync(check):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await anyio.sleep(0.05)


async def test_sigterm_during_a_large_apply_exits_cleanly_and_reports_nothing_half_done(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    repo = upstream("large")
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"cm-{i}", "namespace": namespace},
            "data": {"i": str(i)},
        }
        for i in range(OBJECTS)
    ]
    repo.commit({"deploy/objects.yaml": yaml.safe_dump_all(docs)})
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "syncs": [
                    {
                        "name": "large",
                        "source": {
                            "url": f"{git_daemon}large.git",
                            "path": "deploy",
                            "interval": "1h",
                        },
                    }
                ],
            }
        )
    )
    port, ops_port = _free_port(), _free_port()
    base = f"http://127.0.0.1:{ops_port}"  # /readyz, /metrics, /status
    log = tmp_path / "controller.log"
    command = run_argv(
        kubeconfig=kube.kubeconfig,
        port=port,
        ops_port=ops_port,
        cache_dir=tmp_path / "cache",
        config=config,
        namespace=namespace,
        extra_args=["--concurrency", "4"],
    )
    with log.open("w") as log_file:
        process = await anyio.open_process(command, stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        await _wait(lambda: _get(f"{base}/readyz")[0] == 200, seconds=30, what="/readyz")
        core = client.CoreV1Api(kube.api)

        # The status and metrics endpoints answer while the apply runs.
        status = await anyio.run_process(
            [sys.executable, "-m", "aioreconcile", "status", "--url", base], check=False
        )
        assert status.returncode == 0, status.stderr
        assert status.stdout.decode().splitlines()[1].startswith("large ")
        code, metrics = _get(f"{base}/metrics")
        assert code == 200
        assert b"aioreconcile_queue_depth" in metrics

        # SIGTERM as soon as the apply has started writing.
        with anyio.fail_after(60):
            while not (await core.list_namespaced_config_map(namespace, limit=1)).items:
                await anyio.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = log.read_text()

    assert process.returncode == 0, stderr[-2000:]
    messages = [json.loads(line)["message"] for line in stderr.splitlines() if line.startswith("{")]
    assert "stopping" in messages
    assert "drained" in messages or "drain timed out; stopping anyway" in messages
    # Nothing half-reported: the inventory is either not written or names what was applied.
    inventories = await core.list_namespaced_config_map(
        namespace, field_selector="metadata.name=aioreconcile-inventory-large"
    )
    existing = {cm.metadata.name for cm in (await core.list_namespaced_config_map(namespace)).items}
    if inventories.items:
        entries = json.loads(inventories.items[0].data["entries.json"])
        assert len(entries) == OBJECTS
        assert {e["id"].split("_")[1] for e in entries} <= existing
