"""From a signed push webhook to the changed objects on the cluster, with several syncs on one
repository and either Git transport.

    python -m bench.push [--objects 50] [--changed 50] [--syncs 5] [--transport daemon|http]
                         [--rounds 20] [--kubeconfig K]

A bare repository holds ``--syncs`` directories ``apps/s0`` ... each with ``--objects``
ConfigMaps (``--other-objects`` for all but ``s0``), served on loopback by ``git daemon``
(``--transport daemon``) or smart HTTP (``--transport http``: ``git http-backend`` as CGI behind
a threaded HTTP server, ``bench.githttp``, one CGI process per request). ``aioreconcile run``
runs as a child process with one sync per directory (interval 1h, so only the webhook triggers
a reconcile) and one receiver for all of them. Each round commits a change of ``data.value`` in
``--changed`` ConfigMaps of ``s0`` only and pushes it (not timed); then t0 is taken just before
a signed GitHub push webhook is sent, and t1 when this process's own watch has seen every
changed object with its new value. The round ends when ``GET /status`` shows the commit recorded
by every sync (the unchanged ones record it without rendering), so rounds never overlap.

Reported: p50/p95/min/max of t1 - t0 (``applied``); the stages of ``s0``'s reconcile from the
controller's ``reconciled`` log line (``stages_ms``: queue wait, ref fetch, git checkout,
render, apply, inventory, prune, watch/status), ``beyond_fetch`` = applied - ref fetch (the
issue's "everything but the Git fetch"), the time the unchanged syncs took to record the head,
and git head fetches per push (``aioreconcile_git_head_fetches_total`` from /metrics: fetched
vs shared).
"""

import argparse
import hashlib
import hmac
import os
import random
import re
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson

from aioreconcile.adapters.kube.transport import KubeTransport
from aioreconcile.engine.model import JsonObject
from aioreconcile.testing.controller import controller_process
from aioreconcile.testing.processes import ManagedProcess
from bench.drift import (
    SECRET,
    SECRET_ENV,
    Objects,
    Repository,
    _wait_for_port,
    free_port,
    git_daemon,
    key_of,
    percentile,
    remove,
    watch_configmaps,
)
from bench.reporting import emit

ALL_APPLIED_LIMIT_S = 30.0
STAGES = (
    "queue wait",
    "ref fetch",
    "git fetch",  # the trace's name: verify, lay out the tree, read the commit (after the fetch)
    "git diff",
    "render",
    "apply",
    "inventory read",
    "prune",
    "inventory write",
    "watch sync",
)


def sync_files(objects: Objects, index: int, only: Sequence[int] | None = None) -> dict[str, str]:
    """``Objects.files`` moved from ``deploy/`` to the sync's own directory."""
    return {
        f"apps/s{index}/{name.removeprefix('deploy/')}": text
        for name, text in objects.files(only).items()
    }


@dataclass
class Controller:
    repo: Repository
    url: str
    port: int
    ops_port: int
    process: ManagedProcess
    names: list[str]
    sha: str

    async def status(self, session: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
        async with session.get(f"http://127.0.0.1:{self.ops_port}/status") as response:
            document: dict[str, Any] = await response.json()
        return {s["name"]: s for s in document["syncs"]}

    async def head_fetches(self, session: aiohttp.ClientSession) -> dict[str, float]:
        async with session.get(f"http://127.0.0.1:{self.ops_port}/metrics") as response:
            text = await response.text()
        found = re.findall(
            r'^aioreconcile_git_head_fetches_total\{result="(\w+)"\} (\S+)$', text, re.M
        )
        return {result: float(value) for result, value in found}

    async def wait_recorded(
        self, session: aiohttp.ClientSession, sha: str, *, limit_s: float, poll_s: float = 0.02
    ) -> float:
        """Poll /status until every sync's last applied revision is ``sha``; seconds waited."""
        started = time.perf_counter()
        while True:
            if not self.process.running():
                raise SystemExit(f"the controller exited:\n{self.process.log_tail()}")
            try:
                states = await self.status(session)
            except (aiohttp.ClientError, OSError):
                states = {}
            if states and all(s["lastAppliedRevision"] == sha for s in states.values()):
                return time.perf_counter() - started
            if time.perf_counter() - started > limit_s:
                raise SystemExit(
                    f"{sha} not recorded by every sync after {limit_s:.0f} s: "
                    f"{[(n, s['lastAppliedRevision'], s['reason']) for n, s in states.items()]}"
                    f"\n{self.process.log_tail()}"
                )
            await anyio.sleep(poll_s)

    def reconciled(self) -> dict[tuple[str, str], dict[str, Any]]:
        """``(sync, revision) -> the "reconciled" log line`` of the controller so far."""
        lines: dict[tuple[str, str], dict[str, Any]] = {}
        for raw in self.process.log_path.read_bytes().splitlines():
            if not raw.startswith(b"{"):
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if line.get("message") == "reconciled" and line.get("revision"):
                lines[(line["sync"], line["revision"])] = line
        return lines


@asynccontextmanager
async def git_http(served: Path, workdir: Path) -> AsyncIterator[str]:
    """``http://127.0.0.1:<port>/`` serving every repository under ``served`` (smart HTTP)."""
    port = free_port()
    server = ManagedProcess(
        "git-http",
        [sys.executable, "-m", "bench.githttp", "--root", str(served), "--port", str(port)],
        log_path=workdir / "git-http.log",
    )
    try:
        server.start()
        await _wait_for_port(port, server)
        yield f"http://127.0.0.1:{port}/"
    finally:
        await server.stop(grace=5)


@asynccontextmanager
async def running_controller(
    kubeconfig: Path, workdir: Path, syncs: Sequence[Objects], *, transport: str
) -> AsyncIterator[Controller]:
    served = workdir / "served"
    served.mkdir(parents=True, exist_ok=True)
    repo = Repository.create(served, workdir, "push")
    files: dict[str, str] = {}
    for index, objects in enumerate(syncs):
        files |= sync_files(objects, index)
    sha = repo.commit(files, "initial")
    server = git_daemon if transport == "daemon" else git_http
    async with server(served, workdir) as base:
        url = f"{base}push.git"
        names = [f"s{i}" for i in range(len(syncs))]
        config = {
            "syncs": [
                {
                    "name": name,
                    "source": {"url": url, "ref": "main", "path": f"apps/{name}", "interval": "1h"},
                    "selfHeal": True,
                }
                for name in names
            ],
            "receivers": [
                {"name": "github", "provider": "github", "secretEnv": SECRET_ENV, "syncs": names}
            ],
        }
        os.environ[SECRET_ENV] = SECRET  # inherited by the child, never on its argv
        made = controller_process(
            config, kubeconfig=kubeconfig, namespace=syncs[0].namespaces[0], workdir=workdir
        )
        port, ops_port, process = made.port, made.ops_port, made.process
        try:
            process.start()
            running = Controller(repo, url, port, ops_port, process, names, sha)
            async with aiohttp.ClientSession() as session:
                await running.wait_recorded(session, sha, limit_s=600, poll_s=0.2)
            yield running
        finally:
            await process.stop(grace=30)


def webhook_body(running: Controller, before: str, after: str) -> bytes:
    return orjson.dumps(
        {
            "ref": "refs/heads/main",
            "before": before,
            "after": after,
            "created": False,
            "deleted": False,
            "forced": False,
            "repository": {"name": "push", "clone_url": running.url, "html_url": running.url},
            "head_commit": {"id": after, "message": "bench: change"},
            "commits": [{"id": after, "message": "bench: change"}],
        }
    )


async def send_webhook(
    session: aiohttp.ClientSession, running: Controller, before: str, after: str
) -> tuple[int, float]:
    """POST the signed push; return the status and seconds to the full response."""
    body = webhook_body(running, before, after)
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    started = time.perf_counter()
    async with session.post(
        f"http://127.0.0.1:{running.port}/hooks/github",
        data=body,
        headers={
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": f"sha256={signature}",
            "Content-Type": "application/json",
        },
    ) as response:
        await response.read()
        return response.status, time.perf_counter() - started


async def measure_pushes(
    running: Controller,
    transport: KubeTransport,
    objects: Objects,
    *,
    rounds: int,
    changed: int,
    rng: random.Random,
) -> list[dict[str, Any]]:
    expected: dict[tuple[str, str], str] = {}
    all_seen = anyio.Event()
    seen = [0.0, 0.0]

    def on_event(kind: str, obj: JsonObject, now: float) -> None:
        key = key_of(obj)
        value = expected.get(key)
        if (
            kind == "MODIFIED"
            and value is not None
            and (obj.get("data") or {}).get("value") == value
        ):
            if len(expected) == changed:
                seen[0] = now
            del expected[key]
            if not expected:
                seen[1] = now
                all_seen.set()

    results: list[dict[str, Any]] = []
    before = running.sha
    async with anyio.create_task_group() as tasks, aiohttp.ClientSession() as session:
        await tasks.start(watch_configmaps, transport, on_event)
        await anyio.sleep(0.5)
        for r in range(rounds):
            chosen = sorted(rng.sample(range(objects.n), changed))
            for i in chosen:
                objects.values[i] = f"push-{r}-{i}"
            sha = running.repo.commit(sync_files(objects, 0, only=chosen), f"round {r}")
            all_seen = anyio.Event()
            expected.clear()
            expected.update({objects.ref(i): objects.values[i] for i in chosen})
            fetches_before = await running.head_fetches(session)

            t0 = time.perf_counter()
            status, response_s = await send_webhook(session, running, before, sha)
            if status != 202:
                raise SystemExit(f"webhook answered {status}, expected 202")
            with anyio.move_on_after(ALL_APPLIED_LIMIT_S):
                await all_seen.wait()
            missing = len(expected)
            await running.wait_recorded(session, sha, limit_s=ALL_APPLIED_LIMIT_S)
            recorded_s = time.perf_counter() - t0
            fetches_after = await running.head_fetches(session)
            results.append(
                {
                    "round": r,
                    "sha": sha,
                    "webhook_ms": 1000 * response_s,
                    "first_applied_ms": 1000 * (seen[0] - t0),
                    "all_applied_ms": 1000 * (seen[1] - t0) if not missing else float("nan"),
                    "all_recorded_ms": 1000 * recorded_s,
                    "missing": missing,
                    "fetched": fetches_after.get("fetched", 0) - fetches_before.get("fetched", 0),
                    "shared": fetches_after.get("shared", 0) - fetches_before.get("shared", 0),
                }
            )
            before = sha
            await anyio.sleep(0.2)
        tasks.cancel_scope.cancel()
    lines = running.reconciled()
    for result in results:
        changed_line = lines.get(("s0", result["sha"]), {})
        result["stages_ms"] = changed_line.get("stages_ms", {})
        result["s0_seconds"] = changed_line.get("seconds")
        others = [lines.get((name, result["sha"]), {}) for name in running.names[1:]]
        result["unchanged_ms"] = [1000 * (o.get("seconds") or float("nan")) for o in others]
        result["unchanged_all"] = all(
            str(o.get("detail", "")).startswith("unchanged:") for o in others
        )
    return results


def p50(values: Sequence[float]) -> float:
    return percentile(sorted(v for v in values if v == v), 0.50)


def summary(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
    applied = sorted(r["all_applied_ms"] for r in results if not r["missing"])
    beyond = [
        r["all_applied_ms"] - r["stages_ms"].get("ref fetch", float("nan"))
        for r in results
        if not r["missing"]
    ]
    row: dict[str, Any] = {
        "transport": args.transport,
        "syncs": args.syncs,
        "objects": args.objects,
        "changed": args.changed,
        "rounds": len(results),
        "applied_p50_ms": percentile(applied, 0.50),
        "applied_p95_ms": percentile(applied, 0.95),
        "applied_min_ms": applied[0] if applied else float("nan"),
        "applied_max_ms": applied[-1] if applied else float("nan"),
        "beyond_fetch_p50_ms": p50(beyond),
        "beyond_fetch_p95_ms": percentile(sorted(b for b in beyond if b == b), 0.95),
        "first_p50_ms": p50([r["first_applied_ms"] for r in results]),
        "webhook_p50_ms": p50([r["webhook_ms"] for r in results]),
        "recorded_p50_ms": p50([r["all_recorded_ms"] for r in results]),
        "unchanged_p50_ms": p50([u for r in results for u in r["unchanged_ms"]]),
        "fetches_per_push": p50([r["fetched"] for r in results]),
        "shared_per_push": p50([r["shared"] for r in results]),
        "all_others_unchanged": all(r["unchanged_all"] for r in results),
        "incomplete": sum(1 for r in results if r["missing"]),
    }
    for stage in STAGES:
        values = [r["stages_ms"][stage] for r in results if stage in r["stages_ms"]]
        if values:
            row[f"{stage.replace(' ', '_')}_p50_ms"] = p50(values)
    return row


async def measure(kubeconfig: Path, args: argparse.Namespace, workdir: Path) -> None:
    rng = random.Random(args.seed)
    token = secrets.token_hex(3)
    syncs = [
        Objects(args.objects if i == 0 else args.other_objects, prefix=f"bench-push-{token}-s{i}")
        for i in range(args.syncs)
    ]
    namespaces = [ns for objects in syncs for ns in objects.namespaces]
    async with await KubeTransport.connect(kubeconfig) as transport:
        try:
            async with running_controller(
                kubeconfig, workdir, syncs, transport=args.transport
            ) as running:
                results = await measure_pushes(
                    running,
                    transport,
                    syncs[0],
                    rounds=args.rounds,
                    changed=args.changed,
                    rng=rng,
                )
        finally:
            await remove(transport, namespaces)
    load = os.getloadavg()
    emit(
        "push",
        [summary(args, results)],
        extra={
            "per_round": results,
            "load_average": load,
            "targets": {"beyond_fetch_p50_ms": 100, "applied_p50_ms (http, 5 syncs)": 400},
        },
    )


async def main(args: argparse.Namespace) -> None:
    if args.changed > args.objects:
        raise SystemExit("--changed must not exceed --objects")
    with tempfile.TemporaryDirectory(prefix="aioreconcile-bench-push-") as tmp:
        if args.kubeconfig:
            await measure(args.kubeconfig, args, Path(tmp))
            return
        from aioreconcile.testing import start_control_plane

        async with start_control_plane() as plane:
            await measure(plane.kubeconfig, args, Path(tmp))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--objects", type=int, default=50, help="objects of the changed sync")
    parser.add_argument("--other-objects", type=int, default=50, help="objects of each other sync")
    parser.add_argument("--changed", type=int, default=50, help="objects changed per push")
    parser.add_argument("--syncs", type=int, default=5, help="syncs on the repository")
    parser.add_argument("--transport", choices=["daemon", "http"], default="daemon")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kubeconfig", type=Path, default=None)
    anyio.run(main, parser.parse_args())
