"""Two `aioreconcile run --leader-elect` processes on one sync: only the leader writes; a
graceful stop hands over within a retry period; kill -9 of the leader hands over after the
lease duration, and the new leader heals a drift made meanwhile. Failover is timed."""

import json
import signal
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import yaml
from kubernetes_asyncio import client

from aioreconcile.testing.pytest_plugin import Kube
from tests.e2e.replicas import kill_all, start_replica, until
from tests.e2e.test_run_command import _get
from tests.git.conftest import Upstream

pytestmark = pytest.mark.integration

LEASE_S, RENEW_S, RETRY_S = 3, 2.0, 0.5  # the tuned timings
KILLS = 5


@dataclass
class Replica:
    identity: str
    process: anyio.abc.Process
    ops: str  # http://127.0.0.1:<port>
    log: Path

    def readyz(self) -> str:
        code, body = _get(f"{self.ops}/readyz")
        return body.decode().strip() if code == 200 else ""

    def status(self) -> dict[str, Any]:
        code, body = _get(f"{self.ops}/status")
        assert code == 200
        document: dict[str, Any] = json.loads(body)
        return document

    def metric(self, sample: str) -> float | None:
        _, body = _get(f"{self.ops}/metrics")
        for line in body.decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return None


@dataclass
class Cluster:
    kube: Kube
    namespace: str
    config: Path
    directory: Path
    replicas: list[Replica]

    async def start(self, identity: str) -> Replica:
        started = await start_replica(
            self.kube,
            self.namespace,
            self.directory,
            identity,
            timings=(LEASE_S, RENEW_S, RETRY_S),
            config=self.config,
            inventory_namespace=self.namespace,
            extra_args=["--leader-elect"],
        )
        replica = Replica(identity, started.process, started.ops, started.log)
        self.replicas.append(replica)
        return replica


@asynccontextmanager
async def two_replicas(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> AsyncIterator[Cluster]:
    repo = upstream("app")
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": namespace},
        "data": {"greeting": "hello"},
    }
    repo.commit({"deploy/settings.yaml": yaml.safe_dump(manifest)})
    config = tmp_path / "config.yaml"
    source = {"url": f"{git_daemon}app.git", "path": "deploy", "interval": "1h"}
    config.write_text(yaml.safe_dump({"syncs": [{"name": "app", "source": source}]}))
    cluster = Cluster(kube, namespace, config, tmp_path, [])
    try:
        yield cluster
    finally:
        await kill_all(r.process for r in cluster.replicas)


def _is(replica: Replica, readyz: str) -> bool:
    return replica.readyz() == readyz


def _applied(replica: Replica) -> bool:
    return replica.status()["syncs"][0]["lastAppliedRevision"] is not None


async def _greeting(core: client.CoreV1Api, namespace: str) -> str | None:
    config_map = await core.read_namespaced_config_map("settings", namespace)
    data = config_map.data or {}
    return data.get("greeting")


async def _drift(core: client.CoreV1Api, namespace: str) -> None:
    await core.patch_namespaced_config_map(
        "settings", namespace, {"data": {"greeting": "edited by hand"}}
    )


async def _wait_greeting(core: client.CoreV1Api, namespace: str, *, seconds: float) -> float:
    started = time.monotonic()
    with anyio.fail_after(seconds):
        while True:
            try:
                if await _greeting(core, namespace) == "hello":
                    return time.monotonic() - started
            except client.ApiException as e:
                if e.status != 404:
                    raise
            await anyio.sleep(0.02)


async def test_only_the_leader_writes_and_a_graceful_stop_hands_over_within_a_retry_period(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(kube.api)
    async with two_replicas(kube, namespace, upstream, git_daemon, tmp_path) as cluster:
        a = await cluster.start("a")
        await until(lambda: a.readyz() == "ok: leader", seconds=30, what="a to lead")
        await _wait_greeting(core, namespace, seconds=30)
        b = await cluster.start("b")
        await until(lambda: b.readyz() == "ok: standby", seconds=30, what="b to stand by")
        # Warm: the standby watches the kinds the leader's inventory lists before it leads.
        assert "starting the watch of ConfigMap" in b.log.read_text()

        # A drift while both run: healed by the leader alone.
        await _drift(core, namespace)
        await _wait_greeting(core, namespace, seconds=10)
        await anyio.sleep(0.5)
        assert a.status()["syncs"][0]["driftHeals"] == 1
        standby = b.status()
        assert standby["leadership"] == {
            "lease": f"{namespace}/aioreconcile",
            "identity": "b",
            "role": "standby",
            "holder": "a",
        }
        assert standby["syncs"][0]["reconciles"] == 0
        assert standby["syncs"][0]["driftHeals"] == 0
        assert b.metric('aioreconcile_leader{identity="b"}') == 0
        assert a.metric('aioreconcile_leader{identity="a"}') == 1
        assert b.metric('aioreconcile_reconcile_total{sync="app",reason="Succeeded"}') is None

        a.process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        took = await until(lambda: b.readyz() == "ok: leader", seconds=LEASE_S, what="b to lead")
        with anyio.fail_after(30):
            await a.process.wait()
        assert a.process.returncode == 0, a.log.read_text()[-2000:]
        handed_over = time.monotonic() - stopped
        messages = [json.loads(line)["message"] for line in a.log.read_text().splitlines()]
        assert "released the Lease" in messages
        # Released: one jittered retry period, not the lease duration.
        assert took < RETRY_S * 1.2 + 1.0, (took, handed_over)

        await _drift(core, namespace)
        await _wait_greeting(core, namespace, seconds=10)


async def test_kill_9_of_the_leader_the_standby_takes_over_after_the_lease_and_heals(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    """Five kills, each of the current leader, a new standby started after each takeover.
    Times from the SIGKILL: until the standby reports itself leader, and until a drift made
    right after the kill is healed (the new leader's first reconcile applies it back)."""
    core = client.CoreV1Api(kube.api)
    leads: list[float] = []
    heals: list[float] = []
    async with two_replicas(kube, namespace, upstream, git_daemon, tmp_path) as cluster:
        leader = await cluster.start("r0")
        await until(lambda: leader.readyz() == "ok: leader", seconds=30, what="r0 to lead")
        await _wait_greeting(core, namespace, seconds=30)
        for kill in range(1, KILLS + 1):
            standby = await cluster.start(f"r{kill}")
            await until(partial(_is, standby, "ok: standby"), seconds=30, what="standby")
            await anyio.sleep(RETRY_S * 2)  # the standby has seen a renewal since it started

            leader.process.kill()
            killed = time.monotonic()
            await _drift(core, namespace)
            await until(partial(_is, standby, "ok: leader"), seconds=LEASE_S + 5, what="takeover")
            leads.append(time.monotonic() - killed)
            await _wait_greeting(core, namespace, seconds=30)
            heals.append(time.monotonic() - killed)
            await until(partial(_applied, standby), seconds=10, what="the reconcile recorded")
            await leader.process.wait()
            leader = standby
    print(
        f"\nfailover over {KILLS} kill -9 (lease {LEASE_S} s, renew {RENEW_S} s, retry {RETRY_S} s)"
        f"\n  kill -> standby leads: p50 {statistics.median(leads):.2f} s, max {max(leads):.2f} s"
        f"\n  kill -> drift healed:  p50 {statistics.median(heals):.2f} s, max {max(heals):.2f} s"
        f"\n  leads {[round(x, 2) for x in leads]} heals {[round(x, 2) for x in heals]}"
    )
    # Never before the lease could have expired on the standby's clock; soon after it did.
    assert min(leads) >= LEASE_S - RETRY_S - 0.1, leads
    assert max(leads) < LEASE_S + RETRY_S * 1.2 + 2.0, leads
    assert max(heals) < max(leads) + 5.0, heals


async def test_a_leader_that_loses_its_lease_stops_and_exits_non_zero(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    async with two_replicas(kube, namespace, upstream, git_daemon, tmp_path) as cluster:
        a = await cluster.start("a")
        await until(partial(_is, a, "ok: leader"), seconds=30, what="a to lead")
        # Another holder writes itself in (an operator, or a replica whose clock ran fast).
        await client.CoordinationV1Api(kube.api).patch_namespaced_lease(
            "aioreconcile", namespace, {"spec": {"holderIdentity": "intruder"}}
        )
        with anyio.fail_after(RENEW_S + 5):
            await a.process.wait()
    stderr = a.log.read_text()
    assert a.process.returncode == 2, stderr[-2000:]
    assert "lost the leadership of Lease/" in stderr
    lease = await client.CoordinationV1Api(kube.api).read_namespaced_lease(
        "aioreconcile", namespace
    )
    assert lease.spec.holder_identity == "intruder"  # not released: it was not ours any more
