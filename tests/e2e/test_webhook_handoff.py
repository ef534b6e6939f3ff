"""Webhooks accepted by any replica, CRD mode: `aioreconcile run --leader-elect` processes (no
`--config`) against the real apiserver and a real git daemon. A standby that verifies a delivery
records it on the Sync (`reconcile.aioreconcile.dev/requestedAt` and the hinted revision in
`reconcile.aioreconcile.dev/revision`) before answering 202, and the leader's Sync watch acts on
it: the push survives the death of the replica that received it, and of the leader."""

import json
import os
import signal
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from aioreconcile import runtime
from aioreconcile.engine.receivers import webhook_path
from aioreconcile.reactor.requesting import REQUEST_TIMEOUT_S
from aioreconcile.testing.faults import start_proxy
from aioreconcile.testing.pytest_plugin import Kube
from tests.e2e.replicas import kill_all, start_replica, until
from tests.e2e.test_crd_mode import (
    GROUP,
    VERSION,
    config_maps,
    crds,
    deliver,
    kubectl,
    receiver,
    sync,
    token_secret,
)
from tests.e2e.test_run_command import _get
from tests.faults.conftest import kubeconfig_via
from tests.git.conftest import Upstream

pytestmark = pytest.mark.integration

__all__ = ["crds"]

LEASE_S, RENEW_S, RETRY_S = 3, 2.0, 0.5
TOKEN = "handoff-t0ken"
REQUESTED_AT = "reconcile.aioreconcile.dev/requestedAt"
HINT = "reconcile.aioreconcile.dev/revision"
LATENCY_ROUNDS = int(os.environ.get("HANDOFF_LATENCY_ROUNDS", "10"))


@dataclass
class Replica:
    identity: str
    process: anyio.abc.Process
    ops: str
    hooks: int  # the webhook listener's port
    log: Path

    def readyz(self) -> str:
        code, body = _get(f"{self.ops}/readyz")
        return body.decode().strip() if code == 200 else ""

    def metric(self, name: str) -> float:
        _, body = _get(f"{self.ops}/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total


@dataclass
class Setup:
    kube: Kube
    namespace: str
    directory: Path
    url: str  # the repository's git:// URL
    path: str  # the Receiver's webhook path
    custom: Any
    core: Any
    replicas: list[Replica]

    async def start(self, identity: str) -> Replica:
        started = await start_replica(
            self.kube,
            self.namespace,
            self.directory,
            identity,
            timings=(LEASE_S, RENEW_S, RETRY_S),
            extra_args=["--watch-namespace", self.namespace, "--leader-elect"],
        )
        replica = Replica(identity, started.process, started.ops, started.hooks, started.log)
        self.replicas.append(replica)
        return replica

    async def get_sync(self) -> dict[str, Any]:
        found: dict[str, Any] = await self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "syncs", "app"
        )
        return found

    async def value(self) -> str | None:
        try:
            found = await self.core.read_namespaced_config_map("settings", self.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return (found.data or {}).get("value")


async def _apply_sync_and_receiver(kube: Kube, namespace: str, url: str) -> None:
    """The token Secret, Sync ``app`` of ``url`` and Receiver ``hook`` triggering it."""
    await kubectl(
        kube,
        "apply",
        "-f",
        "-",
        stdin=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    token_secret(namespace, TOKEN),
                    sync("app", namespace, url),
                    receiver("hook", namespace, syncs=["app"]),
                ],
            }
        ),
    )


async def _value_is(setup: Setup, value: str, *, seconds: float) -> float:
    """Seconds until the managed ConfigMap holds ``value`` (the pushed commit is applied)."""
    started = time.monotonic()
    while await setup.value() != value:
        if time.monotonic() - started > seconds:
            pytest.fail(f"commit with value {value!r} not applied within {seconds} s")
        await anyio.sleep(0.01)
    return time.monotonic() - started


@asynccontextmanager
async def leader_and_standby(
    kube: Kube, namespace: str, upstream: Callable[[str], Upstream], git_daemon: str, tmp: Path
) -> AsyncIterator[tuple[Setup, Upstream, Replica, Replica]]:
    """Replica ``a`` leads and has applied the first commit of one Sync (interval 1 h: nothing
    but a webhook or a takeover looks at Git again); ``b`` stands by, warm."""
    repo = upstream("app")
    url = f"{git_daemon}app.git"
    repo.commit(_objects(namespace, "v1"))
    setup = Setup(
        kube,
        namespace,
        tmp,
        url,
        "",
        client.CustomObjectsApi(kube.api),
        client.CoreV1Api(kube.api),
        [],
    )
    try:
        await _apply_sync_and_receiver(kube, namespace, url)
        a = await setup.start("a")
        await until(lambda: a.readyz() == "ok: leader", seconds=30, what="a to lead")
        await _value_is(setup, "v1", seconds=60)
        with anyio.fail_after(30):
            while True:
                found = await setup.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, "receivers", "hook"
                )
                if (found.get("status") or {}).get("webhookPath"):
                    setup.path = found["status"]["webhookPath"]
                    break
                await anyio.sleep(0.1)
        b = await setup.start("b")
        await until(lambda: b.readyz() == "ok: standby", seconds=30, what="b to stand by")
        yield setup, repo, a, b
    finally:
        await kill_all(r.process for r in setup.replicas)


async def _handled(setup: Setup) -> str:
    """Wait until the Sync's status says its ``requestedAt`` was handled; return the value."""
    with anyio.fail_after(30):
        while True:
            found = await setup.get_sync()
            requested = (found["metadata"].get("annotations") or {}).get(REQUESTED_AT)
            status = found.get("status") or {}
            if requested and status.get("lastHandledReconcileAt") == requested:
                return str(requested)
            await anyio.sleep(0.1)


def _objects(namespace: str, value: str) -> dict[str, str]:
    return config_maps(namespace, "settings", value=value)


async def _deliver_when_served(setup: Setup, replica: Replica, sha: str) -> tuple[int, Any]:
    """Deliver to ``replica``, waiting (up to 30 s) for it to serve the Receiver's path: a
    replica serves it once its Receiver watch has listed."""
    deadline = time.monotonic() + 30
    while True:
        code, answer = await deliver(replica.hooks, setup.path, TOKEN, setup.url, sha)
        if code != 404 or time.monotonic() > deadline:
            return code, answer
        await anyio.sleep(0.1)


async def test_a_push_delivered_to_a_standby_is_applied_by_the_leader(
    crds: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    async with leader_and_standby(crds, namespace, upstream, git_daemon, tmp_path) as parts:
        setup, repo, a, b = parts
        sha = repo.commit(_objects(namespace, "v2"))
        code, answer = await _deliver_when_served(setup, b, sha)
        assert code == 202, answer
        assert answer["triggered"] == [f"{namespace}.app"]
        annotations = (await setup.get_sync())["metadata"]["annotations"]
        assert annotations[HINT] == sha  # recorded before the 202
        assert annotations[REQUESTED_AT]
        await _value_is(setup, "v2", seconds=30)
        await _handled(setup)
        hints = f'aioreconcile_push_hints_total{{sync="{namespace}.app",hint="head"}}'
        assert a.metric(hints) == 1
        assert b.readyz() == "ok: standby"  # the standby wrote the request, never the objects
        assert b.metric("aioreconcile_reconcile_total") == 0
        assert b.metric('aioreconcile_webhook_handoffs_total{result="recorded"}') == 1
        assert a.metric("aioreconcile_webhook_handoffs_total") == 0


async def test_the_push_survives_kill_9_of_the_standby_right_after_its_202(
    crds: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    async with leader_and_standby(crds, namespace, upstream, git_daemon, tmp_path) as parts:
        setup, repo, _, b = parts
        sha = repo.commit(_objects(namespace, "v2"))
        code, answer = await _deliver_when_served(setup, b, sha)
        b.process.kill()
        assert code == 202, answer
        await b.process.wait()
        await _value_is(setup, "v2", seconds=30)
        assert (await setup.get_sync())["metadata"]["annotations"][HINT] == sha


async def test_a_push_a_standby_accepted_is_applied_by_the_next_leader_when_the_leader_dies(
    crds: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    """The leader is frozen before the delivery (it cannot act on the request) and killed -9
    right after the standby's 202: the standby takes over and handles the recorded request."""
    async with leader_and_standby(crds, namespace, upstream, git_daemon, tmp_path) as parts:
        setup, repo, a, b = parts
        # The standby serves the path (a delivery of the applied head), then the leader freezes.
        code, answer = await _deliver_when_served(setup, b, repo.git("rev-parse", "HEAD").strip())
        assert code == 202, answer
        sha = repo.commit(_objects(namespace, "v2"))
        a.process.send_signal(signal.SIGSTOP)
        code, answer = await deliver(b.hooks, setup.path, TOKEN, setup.url, sha)
        a.process.kill()
        assert code == 202, answer
        requested = (await setup.get_sync())["metadata"]["annotations"][REQUESTED_AT]
        await until(lambda: b.readyz() == "ok: leader", seconds=LEASE_S + 10, what="b to lead")
        await _value_is(setup, "v2", seconds=30)
        assert await _handled(setup) == requested


async def test_a_push_the_leader_took_in_memory_is_applied_by_the_next_leader_if_it_dies(
    crds: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    """The leader keeps its fast path (no PATCH for a Sync it reconciles itself); killed -9
    right after its 202, the next leader's takeover reconcile fetches the ref's head, so the
    push is applied all the same (only its hint is lost)."""
    async with leader_and_standby(crds, namespace, upstream, git_daemon, tmp_path) as parts:
        setup, repo, a, b = parts
        sha = repo.commit(_objects(namespace, "v2"))
        code, answer = await deliver(a.hooks, setup.path, TOKEN, setup.url, sha)
        a.process.kill()
        assert code == 202, answer
        assert HINT not in ((await setup.get_sync())["metadata"].get("annotations") or {})
        await until(lambda: b.readyz() == "ok: leader", seconds=LEASE_S + 10, what="b to lead")
        await _value_is(setup, "v2", seconds=30)


async def test_a_forged_delivery_to_a_standby_writes_nothing_to_the_sync(
    crds: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    async with leader_and_standby(crds, namespace, upstream, git_daemon, tmp_path) as parts:
        setup, repo, _, b = parts
        # The standby serves the path: a good delivery for the old head is answered 202 ...
        head = repo.git("rev-parse", "HEAD").strip()
        code, answer = await _deliver_when_served(setup, b, head)
        assert code == 202, answer
        await _handled(setup)
        await anyio.sleep(1.5)  # the leader's status write for that request has landed
        before = await setup.get_sync()
        sha = repo.commit(_objects(namespace, "v2"))
        # ... and one signed with another token is refused before anything is written.
        code, answer = await deliver(b.hooks, setup.path, "not-the-token", setup.url, sha)
        assert code == 401, answer
        await anyio.sleep(1.0)
        after = await setup.get_sync()
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        assert after["metadata"]["annotations"].get(HINT) == head
        assert await setup.value() == "v1"


async def test_webhook_to_applied_latency_through_a_standby_and_through_the_leader(
    crds: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    """Webhook sent -> the commit's object changed in the cluster, alternately delivered to
    the leader (its in-memory fast path) and to the standby (PATCH of the Sync, then the
    leader's watch). Prints p50/max of both."""
    direct: list[float] = []
    handed: list[float] = []
    answers: dict[str, list[float]] = {"a": [], "b": []}  # seconds until the 202
    async with leader_and_standby(crds, namespace, upstream, git_daemon, tmp_path) as parts:
        setup, repo, a, b = parts
        await _deliver_when_served(setup, b, repo.git("rev-parse", "HEAD").strip())
        await anyio.sleep(1.0)
        for round_ in range(LATENCY_ROUNDS * 2):
            target, times = (a, direct) if round_ % 2 == 0 else (b, handed)
            value = f"r{round_}"
            sha = repo.commit(_objects(namespace, value))
            started = time.monotonic()
            code, answer = await deliver(target.hooks, setup.path, TOKEN, setup.url, sha)
            answers[target.identity].append(time.monotonic() - started)
            assert code == 202, answer
            await _value_is(setup, value, seconds=30)
            times.append(time.monotonic() - started)
            await anyio.sleep(0.3)
    print(
        f"\nwebhook -> applied over {LATENCY_ROUNDS} pushes each"
        f"\n  to the leader (in memory): p50 {statistics.median(direct) * 1000:.0f} ms,"
        f" max {max(direct) * 1000:.0f} ms {[round(x * 1000) for x in direct]}"
        f"\n  to a standby (via the Sync): p50 {statistics.median(handed) * 1000:.0f} ms,"
        f" max {max(handed) * 1000:.0f} ms {[round(x * 1000) for x in handed]}"
        f"\n  webhook -> 202, p50: leader {statistics.median(answers['a']) * 1000:.1f} ms,"
        f" standby (PATCH included) {statistics.median(answers['b']) * 1000:.1f} ms"
    )
    assert max(handed) < 10


async def test_a_standby_that_cannot_reach_the_apiserver_answers_503_and_records_on_retry(
    crds: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    """A standby (another holder keeps the Lease) reaches the apiserver through a FaultProxy.
    With every connection reset, a verified delivery is answered 503 within the hand-off's
    deadline, not 202: nothing was recorded, so the Git server must deliver it again. The
    redelivery, once the apiserver is reachable, is recorded."""
    repo = upstream("app")
    url = f"{git_daemon}app.git"
    sha = repo.commit(_objects(namespace, "v1"))
    await _apply_sync_and_receiver(crds, namespace, url)
    await client.CoordinationV1Api(crds.api).create_namespaced_lease(
        namespace,
        {
            "metadata": {"name": "aioreconcile"},
            "spec": {"holderIdentity": "elsewhere", "leaseDurationSeconds": 3600},
        },
    )
    server = urlsplit(crds.control_plane.server)
    assert server.hostname is not None
    assert server.port is not None
    path = webhook_path("hook", namespace, token=TOKEN)
    async with start_proxy(server.hostname, server.port) as proxy:
        run = runtime.RunSettings(
            config=None,
            cluster=runtime.ClusterSettings(
                kubeconfig=kubeconfig_via(crds.kubeconfig, proxy.port, tmp_path)
            ),
            listen_port=0,
            ops_port=0,
            watch_namespace=namespace,
            cache_dir=tmp_path / "git-cache",
            leader_election=runtime.LeaderElectionSettings(namespace=namespace, identity="standby"),
        )
        async with anyio.create_task_group() as tasks:
            ports = await tasks.start(runtime.run_controller, run)
            with anyio.fail_after(30):  # served once its Receiver watch has listed
                while (code := (await deliver(ports.webhooks, path, TOKEN, url, sha))[0]) == 404:
                    await anyio.sleep(0.1)
            assert code == 202  # served by a standby, recorded

            proxy.mode = "reset"
            proxy.reset()
            began = time.monotonic()
            code, answer = await deliver(ports.webhooks, path, TOKEN, url, "b" * 40)
            took = time.monotonic() - began
            assert code == 503, answer
            assert answer["status"] == "unavailable"
            assert took < REQUEST_TIMEOUT_S + 1.0, took
            found = await client.CustomObjectsApi(crds.api).get_namespaced_custom_object(
                GROUP, VERSION, namespace, "syncs", "app"
            )
            assert found["metadata"]["annotations"][HINT] == sha  # the 503's hint: not written

            proxy.mode = "forward"
            code, answer = await deliver(ports.webhooks, path, TOKEN, url, "b" * 40)
            assert code == 202, answer
            found = await client.CustomObjectsApi(crds.api).get_namespaced_custom_object(
                GROUP, VERSION, namespace, "syncs", "app"
            )
            assert found["metadata"]["annotations"][HINT] == "b" * 40
            tasks.cancel_scope.cancel()
