"""How many webhook deliveries ``aioreconcile run`` answers per second, and how fast: the path
users take, from outside the process.

    python -m bench.webhook [--requests 5000] [--concurrency 1,16,64] [--runs 5] [--syncs 20]
                            [--kubeconfig K]

``aioreconcile run`` runs as its own process (bench.running): production handler and listener,
JSON logs at info written by ``logs.configure`` to a file, the real controller and its queue
behind ``enqueue``. It has ``--syncs`` syncs, all on repositories served by ``git daemon`` and
applied before measuring: ``deploy`` (a Namespace and 5 ConfigMaps) and ``--syncs - 1`` others
on a second repository (one ConfigMap each); one GitHub receiver is scoped to all of them, so
matching walks every sync and one matches.

The load comes from another process (``--client``): keep-alive HTTP/1.1 over raw asyncio
streams, ``--concurrency`` connections, each sending its next request when the previous answer
is read (much cheaper per request than an HTTP client library, so the rate is the server's).
Two kinds of delivery, measured in separate phases:

- ``valid``: a realistic 1.8 KiB GitHub push for ``deploy``'s repository and ref, naming its
  head, correctly signed, each with a new ``X-GitHub-Delivery``: cap, HMAC, parse, duplicate
  check, match, one INFO log line, ``Controller.push`` (the queue coalesces the triggers of one
  sync while its reconcile runs, so a burst costs a handful of ``git fetch``es: that is what
  users get), 202. The reconciles they cause run in the same process during the phase.
- ``forged``: the same body signed with another secret: cap, HMAC, one WARNING log line, 401.

Each run measures every (concurrency, kind) phase, kinds alternating in order between runs; a
phase is ``--warmup`` untimed requests then ``--requests`` timed ones, after the controller is
quiet (its CPU idle), with the load average read before. Reported per phase: req/s, client
latency percentiles, the controller's CPU per request (while the load ran, and until the
reconciles it caused were done; git children included), log lines written, reconciles run; per
(concurrency, kind): the median, min and max over the runs.
"""

import argparse
import asyncio
import hashlib
import hmac
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import yaml

from aioreconcile.adapters.kube.transport import KubeTransport
from bench.drift import Repository, git_daemon, percentile, remove
from bench.reporting import emit
from bench.running import Controller, run_controller

SECRET_ENV = "BENCH_WEBHOOK_SECRET"
FORGED_SECRET = b"not-the-receiver-secret"
KINDS = ("valid", "forged")
EXPECTED = {"valid": 202, "forged": 401}
RECONCILES = "aioreconcile_queue_processed_total"
FETCHES = "aioreconcile_git_head_fetches_total"


def push_body(url: str, sha: str) -> bytes:
    """A realistic GitHub push (~1.8 KiB): one commit, the repository's URLs, the pusher."""
    commit = {
        "id": sha,
        "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433",
        "distinct": True,
        "message": "web: 3 replicas",
        "timestamp": "2024-05-15T17:19:25+02:00",
        "url": f"https://github.com/acme/deploy-config/commit/{sha}",
        "author": {"name": "The Octocat", "email": "octocat@github.com", "username": "octocat"},
        "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
        "added": [],
        "removed": [],
        "modified": ["deploy/configmaps.yaml"],
    }
    repository = {
        "id": 186853002,
        "name": "deploy",
        "full_name": "acme/deploy",
        "private": True,
        "owner": {"name": "acme", "login": "acme", "id": 21031067, "type": "Organization"},
        "html_url": url,
        "url": url,
        "git_url": url,
        "ssh_url": "git@github.com:acme/deploy.git",
        "clone_url": url,
        "default_branch": "main",
    }
    payload = {
        "ref": "refs/heads/main",
        "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "after": sha,
        "repository": repository,
        "pusher": {"name": "octocat", "email": "octocat@github.com"},
        "sender": {"login": "octocat", "id": 583231, "type": "User"},
        "created": False,
        "deleted": False,
        "forced": False,
        "compare": f"https://github.com/acme/deploy-config/compare/6113728f27ae...{sha[:12]}",
        "commits": [commit],
        "head_commit": commit,
    }
    return orjson.dumps(payload)


# --- the client process -------------------------------------------------------------------------


async def _client(args: argparse.Namespace) -> dict[str, Any]:
    body = push_body(args.url, args.sha)
    secret = os.environ[SECRET_ENV].encode() if args.kind == "valid" else FORGED_SECRET
    signature = hmac.new(secret, body, hashlib.sha256).hexdigest()
    head = (
        "POST /hooks/github HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{args.port}\r\n"
        "Content-Type: application/json\r\n"
        "User-Agent: GitHub-Hookshot/bench\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-GitHub-Event: push\r\n"
        f"X-Hub-Signature-256: sha256={signature}\r\n"
        "X-GitHub-Delivery: "
    ).encode()
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def phase(ids: range, *, timed: bool) -> None:
        todo = iter(ids)

        async def connection() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
            try:
                for n in todo:
                    start = time.perf_counter()
                    writer.write(b"%s%s-%d\r\n\r\n%s" % (head, args.run.encode(), n, body))
                    header = await reader.readuntil(b"\r\n\r\n")
                    status = int(header[9:12])
                    length = int(header.lower().split(b"content-length:", 1)[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    if timed:
                        latencies.append(time.perf_counter() - start)
                        statuses[status] = statuses.get(status, 0) + 1
            finally:
                writer.close()

        await asyncio.gather(*(connection() for _ in range(args.concurrency)))

    await phase(range(args.warmup), timed=False)
    started = time.perf_counter()
    await phase(range(args.warmup, args.warmup + args.requests), timed=True)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "elapsed_s": elapsed,
        "statuses": statuses,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p95_ms": 1000 * percentile(latencies, 0.95),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "max_ms": 1000 * latencies[-1],
    }


# --- the controller and the phases --------------------------------------------------------------


def _configmap(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"value": name},
    }


def _config(deploy_url: str, others_url: str, others: int) -> dict[str, Any]:
    # interval 1h: only the webhook triggers a reconcile
    sources = [("deploy", deploy_url, "deploy")] + [
        (f"o{i}", others_url, f"o{i}") for i in range(others)
    ]
    syncs = [
        {"name": name, "source": {"url": url, "ref": "main", "path": path, "interval": "1h"}}
        for name, url, path in sources
    ]
    return {
        "syncs": syncs,
        "receivers": [
            {
                "name": "github",
                "provider": "github",
                "secretEnv": SECRET_ENV,
                "syncs": [s["name"] for s in syncs],
            }
        ],
    }


def _log_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


async def _phase(
    controller: Controller,
    session: aiohttp.ClientSession,
    *,
    kind: str,
    concurrency: int,
    args: argparse.Namespace,
    url: str,
    sha: str,
    run: int,
) -> dict[str, Any]:
    await controller.wait_quiet()
    load = os.getloadavg()[0]
    reconciles = await controller.metric(session, RECONCILES, 'queue="controller"')
    fetches = await controller.metric(session, FETCHES, 'result="fetched"')
    lines = _log_lines(controller.process.log_path)
    cpu = controller.cpu_seconds()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.webhook",
        "--client",
        f"--port={controller.port}",
        f"--requests={args.requests}",
        f"--warmup={args.warmup}",
        f"--concurrency={concurrency}",
        f"--kind={kind}",
        f"--url={url}",
        f"--sha={sha}",
        f"--run={kind}-{run}-{concurrency}",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    if process.returncode:
        raise SystemExit(f"client failed with exit code {process.returncode}")
    cpu_loaded = controller.cpu_seconds() - cpu
    await controller.wait_quiet()
    cpu_total = controller.cpu_seconds() - cpu
    result = orjson.loads(out)
    sent = args.warmup + args.requests
    statuses = {int(k): v for k, v in result["statuses"].items()}
    if statuses != {EXPECTED[kind]: result["requests"]}:
        raise SystemExit(f"{kind}: expected only {EXPECTED[kind]}, got {statuses}")
    reconciled = await controller.metric(session, RECONCILES, 'queue="controller"') - reconciles
    fetched = await controller.metric(session, FETCHES, 'result="fetched"') - fetches
    return {
        "run": run,
        "kind": kind,
        "concurrency": concurrency,
        "load1": load,
        "req_per_s": result["requests"] / result["elapsed_s"],
        "p50_ms": result["p50_ms"],
        "p95_ms": result["p95_ms"],
        "p99_ms": result["p99_ms"],
        "max_ms": result["max_ms"],
        "status": EXPECTED[kind],
        "cpu_ms_per_req_loaded": 1000 * cpu_loaded / sent,
        "cpu_ms_per_req_total": 1000 * cpu_total / sent,
        "log_lines_per_req": (_log_lines(controller.process.log_path) - lines) / sent,
        "reconciles": reconciled,
        "git_fetches": fetched,
    }


def _summary(phases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(p["concurrency"], p["kind"]) for p in phases}, key=lambda k: (k[0], k[1]))
    for concurrency, kind in keys:
        mine = [p for p in phases if p["concurrency"] == concurrency and p["kind"] == kind]
        rates = [p["req_per_s"] for p in mine]

        def med(key: str, of: list[dict[str, Any]] = mine) -> float:
            return float(statistics.median(p[key] for p in of))

        rows.append(
            {
                "kind": kind,
                "concurrency": concurrency,
                "runs": len(mine),
                "req_per_s_p50": statistics.median(rates),
                "req_per_s_min": min(rates),
                "req_per_s_max": max(rates),
                "p50_ms": med("p50_ms"),
                "p95_ms": med("p95_ms"),
                "p99_ms": med("p99_ms"),
                "p99_ms_max": max(p["p99_ms"] for p in mine),
                "cpu_ms_per_req": med("cpu_ms_per_req_loaded"),
                "cpu_ms_per_req_total": med("cpu_ms_per_req_total"),
                "log_lines_per_req": med("log_lines_per_req"),
                "reconciles_p50": med("reconciles"),
                "git_fetches_p50": med("git_fetches"),
                "load1_min": min(p["load1"] for p in mine),
                "load1_max": max(p["load1"] for p in mine),
            }
        )
    return rows


async def measure(kubeconfig: Path, args: argparse.Namespace, workdir: Path) -> None:
    token = secrets.token_hex(3)
    namespace = f"bench-webhook-{token}"
    os.environ[SECRET_ENV] = secrets.token_hex(32)  # inherited by the controller and the client
    served = workdir / "served"
    served.mkdir()
    deploy = Repository.create(served, workdir, "deploy")
    sha = deploy.commit(
        {
            "deploy/configmaps.yaml": yaml.safe_dump_all(
                [_configmap(f"deploy-{i}", namespace) for i in range(5)]
            )
        },
        "deploy",
    )
    others = Repository.create(served, workdir, "others")
    other_sha = others.commit(
        {
            f"o{i}/configmap.yaml": yaml.safe_dump(_configmap(f"other-{i}", namespace))
            for i in range(args.syncs - 1)
        },
        "others",
    )
    phases: list[dict[str, Any]] = []
    async with (
        await KubeTransport.connect(kubeconfig) as transport,
        git_daemon(served, workdir) as base,
    ):
        await transport.request(
            "POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}}
        )
        try:
            url = f"{base}deploy.git"
            config = _config(url, f"{base}others.git", args.syncs - 1)
            async with (
                run_controller(
                    config, kubeconfig=kubeconfig, workdir=workdir, namespace=namespace
                ) as controller,
                aiohttp.ClientSession() as session,
            ):
                revisions = {"deploy": sha} | {f"o{i}": other_sha for i in range(args.syncs - 1)}
                await controller.wait_applied(session, revisions, limit_s=300, poll_s=0.2)
                started = time.time()
                load_before = os.getloadavg()
                for run in range(args.runs):
                    for concurrency in args.levels:
                        order = KINDS if run % 2 == 0 else KINDS[::-1]
                        for kind in order:
                            phase = await _phase(
                                controller,
                                session,
                                kind=kind,
                                concurrency=concurrency,
                                args=args,
                                url=url,
                                sha=sha,
                                run=run,
                            )
                            phases.append(phase)
                            print(
                                f"run {run} c={concurrency} {kind}: "
                                f"{phase['req_per_s']:.0f} req/s, p99 {phase['p99_ms']:.2f} ms, "
                                f"load {phase['load1']:.2f}",
                                file=sys.stderr,
                            )
                log_bytes = controller.process.log_path.stat().st_size
        finally:
            await remove(transport, [namespace])
    emit(
        "webhook",
        _summary(phases),
        extra={
            "command": " ".join(["python -m bench.webhook", *sys.argv[1:]]),
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "syncs": args.syncs,
            "body_bytes": len(push_body(url, sha)),
            "controller_log_bytes": log_bytes,
            "aiohttp": aiohttp.__version__,
            "python": platform.python_version(),
            "phases": phases,
            "targets": {"req_per_s": 2000, "p99_ms": 5},
        },
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="aioreconcile-bench-webhook-") as tmp:
        if args.kubeconfig:
            await measure(args.kubeconfig, args, Path(tmp))
            return
        from aioreconcile.testing import start_control_plane

        async with start_control_plane() as plane:
            await measure(plane.kubeconfig, args, Path(tmp))


def cli() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="timed requests per phase")
    parser.add_argument("--warmup", type=int, default=500, help="untimed requests per phase")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--syncs", type=int, default=20)
    parser.add_argument("--kubeconfig", type=Path, default=None)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--sha", help=argparse.SUPPRESS)
    parser.add_argument("--run", default="run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        args.concurrency = int(args.concurrency)
        result = asyncio.run(_client(args))
        sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS))
        return
    if args.syncs < 2:
        raise SystemExit("--syncs must be at least 2 (deploy and one other)")
    args.levels = [int(level) for level in args.concurrency.split(",")]
    anyio.run(main, args)


if __name__ == "__main__":
    cli()
