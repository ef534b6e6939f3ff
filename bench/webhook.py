"""How many signed pushes the webhook receiver answers per second, and how fast.

    python -m bench.webhook [--requests 20000] [--concurrency 1,16,64] [--syncs 100]

The receiver (a GitHub receiver, ``--syncs`` configured syncs of which one matches) runs in this
process; the load comes from a second process (``--client``), pinned to the other core when
there are two, so the server has a core of its own. Every request is a distinct, correctly
signed push that triggers one sync, i.e. the full path: cap, HMAC, parse, duplicate check,
match, enqueue, answer 202. Latency is measured by the client, per request.
"""

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from aioreconcile.adapters.serving.listening import ListenerLimits, serve
from aioreconcile.adapters.webhook.receiving import build_app
from aioreconcile.engine.config import GitSourceSpec, Provider, ReceiverSpec, SyncSpec
from aioreconcile.engine.triggers import Push
from aioreconcile.engine.webhooks import sign
from bench.reporting import emit

SECRET = b"bench-secret-0123456789abcdef"
SHA = "59b20b8d5c6ff8d09518454d4dd8b7a30f095ab5"
WARMUP = 1000


def _body() -> bytes:
    """A realistic GitHub push (~2.5 KiB): one commit, the repository's URLs, the pusher."""
    commit = {
        "id": SHA,
        "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433",
        "distinct": True,
        "message": "web: 3 replicas",
        "timestamp": "2024-05-15T17:19:25+02:00",
        "url": f"https://github.com/acme/deploy-config/commit/{SHA}",
        "author": {"name": "The Octocat", "email": "octocat@github.com", "username": "octocat"},
        "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
        "added": [],
        "removed": [],
        "modified": ["apps/web/deployment.yaml"],
    }
    repository = {
        "id": 186853002,
        "name": "deploy-config",
        "full_name": "acme/deploy-config",
        "private": True,
        "owner": {"name": "acme", "login": "acme", "id": 21031067, "type": "Organization"},
        "html_url": "https://github.com/acme/deploy-config",
        "url": "https://github.com/acme/deploy-config",
        "git_url": "git://github.com/acme/deploy-config.git",
        "ssh_url": "git@github.com:acme/deploy-config.git",
        "clone_url": "https://github.com/acme/deploy-config.git",
        "default_branch": "main",
    }
    payload = {
        "ref": "refs/heads/main",
        "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "after": SHA,
        "repository": repository,
        "pusher": {"name": "octocat", "email": "octocat@github.com"},
        "sender": {"login": "octocat", "id": 583231, "type": "User"},
        "created": False,
        "deleted": False,
        "forced": False,
        "compare": "https://github.com/acme/deploy-config/compare/6113728f27ae...59b20b8d5c6f",
        "commits": [commit],
        "head_commit": commit,
    }
    return orjson.dumps(payload)


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


# --- the client process -------------------------------------------------------------------------


async def _client(port: int, requests: int, concurrency: int, run: str) -> dict[str, Any]:
    """Keep-alive HTTP/1.1 over raw asyncio streams: a load generator much cheaper per request
    than a full HTTP client, so the numbers are the server's, not the client's."""
    body = _body()
    head = (
        "POST /hooks/github HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-GitHub-Event: push\r\n"
        f"X-Hub-Signature-256: sha256={sign(SECRET, body)}\r\n"
        "X-GitHub-Delivery: "
    ).encode()
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def phase(ids: range, *, timed: bool) -> None:
        todo = iter(ids)

        async def connection() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                for n in todo:
                    start = time.perf_counter()
                    writer.write(b"%s%s-%d\r\n\r\n%s" % (head, run.encode(), n, body))
                    header = await reader.readuntil(b"\r\n\r\n")
                    status = int(header[9:12])
                    length = int(header.lower().split(b"content-length:", 1)[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    if timed:
                        latencies.append(time.perf_counter() - start)
                        statuses[status] = statuses.get(status, 0) + 1
            finally:
                writer.close()

        await asyncio.gather(*(connection() for _ in range(concurrency)))

    await phase(range(WARMUP), timed=False)  # code paths warm before timing
    started = time.perf_counter()
    await phase(range(WARMUP, WARMUP + requests), timed=True)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "elapsed_s": elapsed,
        "statuses": statuses,
        "p50_ms": 1000 * _percentile(latencies, 0.50),
        "p95_ms": 1000 * _percentile(latencies, 0.95),
        "p99_ms": 1000 * _percentile(latencies, 0.99),
        "max_ms": 1000 * latencies[-1],
    }


# --- the server (this process) ------------------------------------------------------------------


def _pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {core})


async def _serve_and_measure(requests: int, levels: list[int], syncs: int) -> None:
    configured = [
        SyncSpec(f"app-{n}", GitSourceSpec(url=f"https://github.com/acme/service-{n}.git"))
        for n in range(syncs - 1)
    ]
    configured.append(SyncSpec("deploy", GitSourceSpec(url="git@github.com:acme/deploy-config")))
    enqueued = Counter[str]()

    def enqueue(push: Push) -> None:  # the reactor's queue coalesces; here a count is enough
        enqueued[push.sync] += 1

    app = build_app(
        # Scoped to every configured sync: matching still walks all 100 of them.
        [
            ReceiverSpec(
                "github",
                Provider.GITHUB,
                secret_env="BENCH",
                syncs=tuple(s.name for s in configured),
            )
        ],
        secrets={"github": SECRET},
        syncs=lambda: configured,
        enqueue=enqueue,
    )
    handler_s: list[float] = []

    @web.middleware
    async def timing(request: web.Request, handler: Handler) -> web.StreamResponse:
        """The handler's own time, from routed request to response, without network or queue."""
        start = time.perf_counter()
        try:
            return await handler(request)
        finally:
            handler_s.append(time.perf_counter() - start)

    app.middlewares.append(timing)
    rows = []
    # The listener as `aioreconcile run` serves it: head/body deadlines, connection cap, JSON
    # errors (adapters/serving/listening.py).
    async with serve(app, host="127.0.0.1", port=0, limits=ListenerLimits()) as port:
        for concurrency in levels:
            enqueued.clear()
            handler_s.clear()
            cpu_before = _cpu_seconds()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.webhook",
                "--client",
                f"--port={port}",
                f"--requests={requests}",
                f"--concurrency={concurrency}",
                f"--run=c{concurrency}",
                stdout=subprocess.PIPE,
            )
            out, _ = await process.communicate()
            if process.returncode:
                raise SystemExit(f"client failed with exit code {process.returncode}")
            result = orjson.loads(out)
            server_cpu = _cpu_seconds() - cpu_before
            handled = sorted(handler_s[WARMUP:])
            rows.append(
                {
                    "concurrency": concurrency,
                    "requests": result["requests"],
                    "req_per_s": result["requests"] / result["elapsed_s"],
                    "p50_ms": result["p50_ms"],
                    "p95_ms": result["p95_ms"],
                    "p99_ms": result["p99_ms"],
                    "max_ms": result["max_ms"],
                    "handler_p50_ms": 1000 * _percentile(handled, 0.50),
                    "handler_p99_ms": 1000 * _percentile(handled, 0.99),
                    "status_202": result["statuses"].get("202", 0),
                    "enqueued": enqueued.total() - WARMUP,
                    "server_cpu_ms_per_req": 1000 * server_cpu / (requests + WARMUP),
                }
            )
    emit(
        "webhook",
        rows,
        extra={
            "syncs": syncs,
            "body_bytes": len(_body()),
            "warmup_requests": WARMUP,
            "targets": {"req_per_s": 2000, "p99_ms": 5},
        },
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    parser.add_argument("--syncs", type=int, default=100)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run", default="run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        _pin(1)
        result = asyncio.run(_client(args.port, args.requests, int(args.concurrency), args.run))
        sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS))
        return
    _pin(0)
    levels = [int(level) for level in args.concurrency.split(",")]
    asyncio.run(_serve_and_measure(args.requests, levels, args.syncs))


if __name__ == "__main__":
    main()
