"""How fast the engine applies, compared with the ceiling of a raw server-side-apply loop.

    python -m bench.apply [--sizes 100,1000,5000] [--concurrency 16] [--kubeconfig K]

Without --kubeconfig it starts its own real control plane (aioreconcile.testing). For each N it
writes N objects (ConfigMaps, 5% Deployments, 5% Services) into a directory and measures, in a
fresh child process each time (so peak RSS is the engine's own):

- cold apply: ``aioreconcile apply`` of the directory into an empty namespace;
- no-op re-apply: the same directory again (nothing to write);
- raw ceiling: the same objects, pre-serialised, PATCHed (server-side apply) by a minimal aiohttp
  loop with the same concurrency into another empty namespace, no engine at all.

It prints objects/s for both, their ratio, the no-op time and the engine's peak RSS.
"""

import argparse
import base64
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import yaml

from bench.reporting import emit


def objects(n: int, namespace: str) -> list[dict[str, Any]]:
    """N objects: 5% Deployments, 5% Services, the rest ConfigMaps."""
    workloads = max(1, n // 20)
    result: list[dict[str, Any]] = []
    for i in range(workloads):
        labels = {"app": f"web-{i}"}
        result.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": f"web-{i}", "namespace": namespace},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [
                                {
                                    "name": "web",
                                    "image": "nginx:1.27",
                                    "ports": [{"containerPort": 80}],
                                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                                }
                            ]
                        },
                    },
                },
            }
        )
        result.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"web-{i}", "namespace": namespace},
                "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 80}]},
            }
        )
    for i in range(n - len(result)):
        result.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"settings-{i}", "namespace": namespace},
                "data": {"index": str(i), "payload": "x" * 200},
            }
        )
    return result


def write_directory(directory: Path, docs: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(docs), 100):
        (directory / f"objects-{start:05d}.yaml").write_text(
            yaml.safe_dump_all(docs[start : start + 100], sort_keys=False)
        )


def run_child(directory: Path, kubeconfig: Path, concurrency: int) -> dict[str, Any]:
    """``python -m bench.apply --child``: one engine apply, timed inside, in its own process."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.apply",
            "--child",
            str(directory),
            "--kubeconfig",
            str(kubeconfig),
            "--concurrency",
            str(concurrency),
        ],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"engine apply failed (exit {process.returncode})")
    result: dict[str, Any] = orjson.loads(out)
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    return result


async def child(directory: Path, kubeconfig: Path, concurrency: int) -> None:
    from aioreconcile import runtime

    settings = runtime.DirectorySettings(
        path=directory,
        sync="bench",
        concurrency=concurrency,
        cluster=runtime.ClusterSettings(kubeconfig=kubeconfig),
    )
    started = time.perf_counter()
    outcome = await runtime.apply_directory(settings)
    seconds = time.perf_counter() - started
    if not outcome.ok:
        print(outcome.message, file=sys.stderr)
        for entry in outcome.changeset.failed[:5]:
            print(f"  {entry.ref}: {entry.error}", file=sys.stderr)
        raise SystemExit(1)
    totals = {a.value: n for a, n in outcome.changeset.totals().items() if n}
    sys.stdout.write(orjson.dumps({"seconds": seconds, "totals": totals}).decode())


class RawClient:
    """The ceiling: aiohttp + orjson + a semaphore, straight from the kubeconfig."""

    def __init__(self, kubeconfig: Path, workdir: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.server = cluster["server"]
        files = {}
        for key in ("certificate-authority-data", "client-certificate-data", "client-key-data"):
            path = workdir / key
            path.write_bytes(base64.b64decode(cluster.get(key) or user.get(key)))
            files[key] = str(path)
        self.ssl = ssl.create_default_context(cafile=files["certificate-authority-data"])
        self.ssl.load_cert_chain(files["client-certificate-data"], files["client-key-data"])

    @asynccontextmanager
    async def session(self, limit: int) -> AsyncIterator[aiohttp.ClientSession]:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ssl=self.ssl)
        ) as session:
            yield session

    async def create_namespace(self, name: str) -> None:
        async with (
            self.session(1) as session,
            session.post(
                f"{self.server}/api/v1/namespaces",
                data=orjson.dumps({"metadata": {"name": name}}),
                headers={"Content-Type": "application/json"},
            ) as response,
        ):
            response.raise_for_status()

    async def apply_all(self, docs: list[dict[str, Any]], concurrency: int) -> float:
        plural = {"ConfigMap": "configmaps", "Service": "services", "Deployment": "deployments"}
        requests = []
        for doc in docs:
            prefix = "/apis/apps/v1" if doc["kind"] == "Deployment" else "/api/v1"
            meta = doc["metadata"]
            url = (
                f"{self.server}{prefix}/namespaces/{meta['namespace']}/"
                f"{plural[doc['kind']]}/{meta['name']}"
            )
            requests.append((url, orjson.dumps(doc)))
        limiter = anyio.CapacityLimiter(concurrency)
        started = time.perf_counter()
        async with self.session(concurrency) as session:

            async def one(url: str, body: bytes) -> None:
                async with (
                    limiter,
                    session.patch(
                        url,
                        data=body,
                        params={"fieldManager": "bench-raw", "force": "true"},
                        headers={"Content-Type": "application/apply-patch+yaml"},
                    ) as response,
                ):
                    await response.read()
                    response.raise_for_status()

            async with anyio.create_task_group() as tasks:
                for url, body in requests:
                    tasks.start_soon(one, url, body)
        return time.perf_counter() - started


async def measure(kubeconfig: Path, sizes: list[int], concurrency: int, workdir: Path) -> None:
    raw = RawClient(kubeconfig, workdir)
    rows = []
    for n in sizes:
        engine_ns, raw_ns = f"bench-engine-{n}", f"bench-raw-{n}"
        docs = objects(n, engine_ns)
        directory = workdir / f"objects-{n}"
        write_directory(
            directory,
            [*docs, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": engine_ns}}],
        )
        cold = run_child(directory, kubeconfig, concurrency)
        noop = run_child(directory, kubeconfig, concurrency)
        await raw.create_namespace(raw_ns)
        raw_seconds = await raw.apply_all(objects(n, raw_ns), concurrency)
        engine_rate = (n + 1) / cold["seconds"]
        raw_rate = n / raw_seconds
        rows.append(
            {
                "objects": n,
                "engine_cold_s": cold["seconds"],
                "engine_obj_per_s": engine_rate,
                "raw_ssa_s": raw_seconds,
                "raw_obj_per_s": raw_rate,
                "engine_vs_raw": engine_rate / raw_rate,
                "noop_reapply_s": noop["seconds"],
                "noop_unchanged": noop["totals"].get("unchanged", 0),
                "engine_peak_rss_mib": max(cold["peak_rss_mib"], noop["peak_rss_mib"]),
            }
        )
    emit("apply", rows, extra={"concurrency": concurrency})


async def main(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="aioreconcile-bench-") as tmp:
        if args.kubeconfig:
            await measure(args.kubeconfig, sizes, args.concurrency, Path(tmp))
            return
        from aioreconcile.testing import start_control_plane

        async with start_control_plane() as plane:
            await measure(plane.kubeconfig, sizes, args.concurrency, Path(tmp))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kubeconfig", type=Path, default=None)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        anyio.run(child, arguments.child, arguments.kubeconfig, arguments.concurrency)
    else:
        anyio.run(main, arguments)
