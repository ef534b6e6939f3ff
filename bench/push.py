"""From a signed push webhook to the changed objects on the cluster.

    python -m bench.push [--objects 200] [--changed 50] [--rounds 20] [--kubeconfig K]

The setup is bench.drift's: a bare repository with ``--objects`` ConfigMaps served by
``git daemon`` on loopback and ``aioreconcile run`` as a child process (interval 1h, so nothing
but the webhook triggers a reconcile). Each round commits a change of ``data.value`` in
``--changed`` random ConfigMaps and pushes it (not timed); then t0 is taken just before a signed
GitHub push webhook is sent (``X-Hub-Signature-256``, a unique ``X-GitHub-Delivery``, the
``git://`` URL of the sync as ``repository.clone_url``), and t1 when this process's own watch
has seen every changed object with its new value. The round ends when ``GET /status`` shows the
commit applied (inventory written), so rounds never overlap.

Reported: p50/p95/max of t1 - t0 (``applied``), when the first of the changed objects was seen
(``first``: webhook, fetch, checkout, render, plan and the first apply; the rest of ``applied``
is applying the others), the webhook's response time, and when /status said applied (polled
every 20 ms after t1, so it is an upper bound).
"""

import argparse
import hashlib
import hmac
import random
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson

from aioreconcile.adapters.kube.transport import KubeTransport
from aioreconcile.engine.model import JsonObject
from bench.drift import (
    SECRET,
    Objects,
    Running,
    key_of,
    percentile,
    remove,
    running_controller,
    watch_configmaps,
)
from bench.reporting import emit

ALL_APPLIED_LIMIT_S = 30.0


def webhook_body(running: Running, before: str, after: str) -> bytes:
    return orjson.dumps(
        {
            "ref": "refs/heads/main",
            "before": before,
            "after": after,
            "created": False,
            "deleted": False,
            "forced": False,
            "repository": {
                "name": running.repo.name,
                "clone_url": running.url,
                "html_url": running.url,
            },
            "head_commit": {"id": after, "message": "bench: change"},
            "commits": [{"id": after, "message": "bench: change"}],
        }
    )


async def send_webhook(
    session: aiohttp.ClientSession, running: Running, before: str, after: str
) -> tuple[int, float]:
    """POST the signed push; return the status and seconds to the full response."""
    body = webhook_body(running, before, after)
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    started = time.perf_counter()
    async with session.post(
        f"{running.base}/hooks/github",
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
    running: Running,
    transport: KubeTransport,
    *,
    rounds: int,
    changed: int,
    rng: random.Random,
) -> list[dict[str, Any]]:
    objects = running.objects
    expected: dict[tuple[str, str], str] = {}
    all_seen = anyio.Event()
    seen = [0.0, 0.0]  # when the first and the last changed object showed its new value

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
    async with (
        anyio.create_task_group() as tasks,
        aiohttp.ClientSession() as session,
    ):
        await tasks.start(watch_configmaps, transport, on_event)
        await anyio.sleep(0.5)  # let the watch request reach the server
        for r in range(rounds):
            chosen = sorted(rng.sample(range(objects.n), changed))
            for i in chosen:
                objects.values[i] = f"push-{r}-{i}"
            sha = running.repo.commit(objects.files(only=chosen), f"round {r}")
            all_seen = anyio.Event()
            expected.clear()
            expected.update({objects.ref(i): objects.values[i] for i in chosen})

            t0 = time.perf_counter()
            status, response_s = await send_webhook(session, running, before, sha)
            if status != 202:
                raise SystemExit(f"webhook answered {status}, expected 202")
            with anyio.move_on_after(ALL_APPLIED_LIMIT_S):
                await all_seen.wait()
            missing = len(expected)
            first_s = seen[0] - t0
            applied_s = seen[1] - t0 if not missing else float("nan")
            await running.wait_applied(session, sha, limit_s=ALL_APPLIED_LIMIT_S, poll_s=0.02)
            status_s = time.perf_counter() - t0
            results.append(
                {
                    "round": r,
                    "webhook_ms": 1000 * response_s,
                    "first_applied_ms": 1000 * first_s,
                    "all_applied_ms": 1000 * applied_s,
                    "status_applied_ms": 1000 * status_s,
                    "missing": missing,
                }
            )
            before = sha
            await anyio.sleep(0.2)
        tasks.cancel_scope.cancel()
    return results


def summary(objects: int, changed: int, results: list[dict[str, Any]]) -> dict[str, Any]:
    applied = sorted(r["all_applied_ms"] for r in results if not r["missing"])
    hooks = sorted(r["webhook_ms"] for r in results)
    status = sorted(r["status_applied_ms"] for r in results)
    first = sorted(r["first_applied_ms"] for r in results)
    return {
        "objects": objects,
        "changed": changed,
        "rounds": len(results),
        "applied_p50_ms": percentile(applied, 0.50),
        "applied_p95_ms": percentile(applied, 0.95),
        "applied_max_ms": applied[-1] if applied else float("nan"),
        "first_p50_ms": percentile(first, 0.50),
        "incomplete": sum(1 for r in results if r["missing"]),
        "webhook_p50_ms": percentile(hooks, 0.50),
        "webhook_max_ms": hooks[-1],
        "status_p50_ms": percentile(status, 0.50),
    }


async def measure(kubeconfig: Path, args: argparse.Namespace, workdir: Path) -> None:
    rng = random.Random(args.seed)
    objects = Objects(args.objects, prefix=f"bench-push-{secrets.token_hex(3)}")
    async with await KubeTransport.connect(kubeconfig) as transport:
        try:
            async with running_controller(kubeconfig, workdir, objects, name="push") as running:
                apply_s = running.apply_s
                results = await measure_pushes(
                    running, transport, rounds=args.rounds, changed=args.changed, rng=rng
                )
        finally:
            await remove(transport, objects.namespaces)
    row = {**summary(args.objects, args.changed, results), "initial_apply_s": apply_s}
    emit("push", [row], extra={"per_round": results, "targets": {"applied_p50_ms": 500}})


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="aioreconcile-bench-push-") as tmp:
        if args.kubeconfig:
            await measure(args.kubeconfig, args, Path(tmp))
            return
        from aioreconcile.testing import start_control_plane

        async with start_control_plane() as plane:
            await measure(plane.kubeconfig, args, Path(tmp))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--changed", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kubeconfig", type=Path, default=None)
    anyio.run(main, parser.parse_args())
