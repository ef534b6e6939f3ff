"""Shard Leases against the real apiserver: replicas split the shards evenly, a joining replica
is given its share (the old holder stops its work before releasing), a killed replica's shards
are taken over within the lease duration, a graceful stop hands them over at once, a shard taken
by someone else only stops that shard, and a replica that cannot reach the apiserver stops."""

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest

from aioreconcile.adapters.kube.sharding import ShardElector
from aioreconcile.adapters.kube.transport import MERGE_PATCH, KubeTransport
from aioreconcile.engine.leadership import LeaseTimings
from aioreconcile.engine.sharding import ROLE_LABEL, SET_LABEL, SHARD_INDEX_LABEL
from aioreconcile.testing.faults import FaultProxy, start_proxy
from aioreconcile.testing.pytest_plugin import Kube
from tests.integration.test_watching import kubeconfig_via

pytestmark = pytest.mark.integration

TUNED = LeaseTimings(lease_duration_s=3, renew_deadline_s=2.0, retry_period_s=0.5)
NAME = "aioreconcile"


@pytest.fixture
async def transport(kube: Kube) -> AsyncIterator[KubeTransport]:
    async with await KubeTransport.connect(kube.kubeconfig) as opened:
        yield opened


@dataclass
class Work:
    """What each replica was told, in order, and who runs each shard's work right now: a
    shard's work started while another replica's still runs is an overlap."""

    log: list[tuple[float, str, str, int]] = field(default_factory=list)
    running: dict[int, set[str]] = field(default_factory=dict)
    overlaps: list[tuple[int, set[str]]] = field(default_factory=list)

    def elector(
        self, transport: KubeTransport, namespace: str, identity: str, shards: int = 3
    ) -> ShardElector:
        def gained(shard: int) -> None:
            self.log.append((time.monotonic(), identity, "gain", shard))
            holders = self.running.setdefault(shard, set())
            if holders:
                self.overlaps.append((shard, {*holders, identity}))
            holders.add(identity)

        async def lost(shard: int) -> None:
            await anyio.sleep(0.05)  # the work takes a moment to stop
            self.running.get(shard, set()).discard(identity)
            self.log.append((time.monotonic(), identity, "lose", shard))

        return ShardElector(
            transport,
            namespace=namespace,
            name=NAME,
            identity=identity,
            shards=shards,
            timings=TUNED,
            on_gain=gained,
            on_lose=lost,
        )


async def _until(check: Callable[[], bool], *, seconds: float) -> float:
    started = time.monotonic()
    with anyio.fail_after(seconds):
        while not check():
            await anyio.sleep(0.01)
    return time.monotonic() - started


def _spread(*electors: ShardElector) -> list[int]:
    return sorted(len(e.held) for e in electors)


def _all_held(*electors: ShardElector, shards: int = 3) -> bool:
    held = [shard for e in electors for shard in e.held]
    return sorted(held) == list(range(shards))


async def _leases(transport: KubeTransport, namespace: str) -> dict[str, dict[str, object]]:
    response = await transport.request(
        "GET",
        f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
        params={"labelSelector": f"{SET_LABEL}={NAME}"},
    )
    return {item["metadata"]["name"]: item for item in response.body["items"]}


@asynccontextmanager
async def killable(kube: Kube, directory: Path) -> AsyncIterator[tuple[FaultProxy, KubeTransport]]:
    """A transport through a proxy: ``proxy.mode = "reset"`` and ``proxy.reset()`` make every
    request of it fail at once, as the network of a process killed -9 (nothing more is sent)."""
    server = urlsplit(kube.control_plane.server)
    assert server.hostname is not None
    assert server.port is not None
    async with start_proxy(server.hostname, server.port) as proxy:
        via = kubeconfig_via(kube.kubeconfig, proxy.port, directory)
        async with await KubeTransport.connect(via) as transport:
            yield proxy, transport


def _kill(proxy: FaultProxy, scope: anyio.CancelScope) -> None:
    proxy.mode = "reset"
    proxy.reset()
    scope.cancel()


async def test_three_replicas_hold_one_shard_each_and_the_leases_say_so(
    transport: KubeTransport, namespace: str
) -> None:
    work = Work()
    electors = [work.elector(transport, namespace, name) for name in ("a", "b", "c")]
    async with anyio.create_task_group() as tasks:
        for elector in electors:
            tasks.start_soon(elector.run)
        await _until(lambda: _spread(*electors) == [1, 1, 1], seconds=10)
        await anyio.sleep(TUNED.lease_duration_s * 2)  # many rounds: nothing moves
        assert _spread(*electors) == [1, 1, 1]
        assert all(e.members() == ["a", "b", "c"] for e in electors)
        leases = await _leases(transport, namespace)
        holders = {e.identity: next(iter(e.held)) for e in electors}
        tasks.cancel_scope.cancel()
    for identity, shard in holders.items():
        lease = leases[f"{NAME}-shard-{shard}"]
        assert lease["spec"]["holderIdentity"] == identity  # type: ignore[index]
        labels = lease["metadata"]["labels"]  # type: ignore[index]
        assert labels == {SET_LABEL: NAME, ROLE_LABEL: "shard", SHARD_INDEX_LABEL: str(shard)}
    members = [n for n, lease in leases.items() if "-member-" in n]
    assert len(members) == 3
    assert work.overlaps == []
    # Gains only: no shard was taken and given back on the way.
    assert sorted(entry[2:] for entry in work.log if entry[2] == "gain") == sorted(
        ("gain", shard) for shard in holders.values()
    )
    # A graceful stop deleted the member Leases and released the shards.
    after = await _leases(transport, namespace)
    assert not [n for n in after if "-member-" in n]
    assert {lease["spec"]["holderIdentity"] for lease in after.values()} == {""}  # type: ignore[index]


async def test_a_joining_replica_gets_its_share_after_the_old_holder_stopped_that_work(
    transport: KubeTransport, namespace: str
) -> None:
    work = Work()
    a, b = work.elector(transport, namespace, "a"), work.elector(transport, namespace, "b")
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(a.run)
        await _until(lambda: len(a.held) == 3, seconds=10)
        tasks.start_soon(b.run)
        took = await _until(lambda: _spread(a, b) == [1, 2] and _all_held(a, b), seconds=10)
        tasks.cancel_scope.cancel()
    assert work.overlaps == []
    moved = [shard for _, who, what, shard in work.log if who == "b" and what == "gain"]
    assert moved
    for shard in moved:
        given_back = [t for t, who, what, s in work.log if (who, what, s) == ("a", "lose", shard)]
        taken = [t for t, who, what, s in work.log if (who, what, s) == ("b", "gain", shard)]
        assert given_back[0] < taken[0]
    # Released, not expired: a few retry periods, never a lease duration.
    assert took < TUNED.lease_duration_s, took


async def test_a_killed_replicas_shards_are_taken_over_within_the_lease_duration(
    kube: Kube, transport: KubeTransport, namespace: str, tmp_path: Path
) -> None:
    work = Work()
    a, b = work.elector(transport, namespace, "a"), work.elector(transport, namespace, "b")
    async with killable(kube, tmp_path) as (proxy, through), anyio.create_task_group() as tasks:
        c = work.elector(through, namespace, "c")
        doomed = anyio.CancelScope()

        async def run_c() -> None:
            with doomed:
                await c.run()

        for run in (a.run, b.run, run_c):
            tasks.start_soon(run)
        await _until(lambda: _spread(a, b, c) == [1, 1, 1], seconds=10)
        orphan = next(iter(c.held))
        await anyio.sleep(TUNED.retry_period_s * 3)
        _kill(proxy, doomed)
        killed = time.monotonic()
        await _until(lambda: _all_held(a, b), seconds=TUNED.lease_duration_s + 3)
        took = time.monotonic() - killed
        await _until(lambda: a.members() == ["a", "b"] and b.members() == ["a", "b"], seconds=2)
        tasks.cancel_scope.cancel()
    print(f"\nkilled replica's shard {orphan} taken over after {took:.2f} s")
    # Never before the lease could have expired on the survivors' clocks; soon after it did.
    assert TUNED.lease_duration_s - TUNED.retry_period_s <= took, took
    assert took < TUNED.lease_duration_s + TUNED.retry_period_s * 1.2 + 1.0, took
    # c stopped its work when it could not renew (its renew deadline), before the takeover.
    c_lost = [t for t, who, what, s in work.log if (who, what, s) == ("c", "lose", orphan)]
    taken = [t for t, who, what, s in work.log if what == "gain" and s == orphan and who != "c"]
    assert c_lost
    assert taken
    assert c_lost[0] < taken[-1]
    assert work.overlaps == []


async def test_a_graceful_stop_hands_its_shard_over_within_a_few_retry_periods(
    transport: KubeTransport, namespace: str
) -> None:
    work = Work()
    a, b, c = (work.elector(transport, namespace, name) for name in ("a", "b", "c"))
    async with anyio.create_task_group() as tasks:
        stopping = anyio.CancelScope()

        async def run_c() -> None:
            with stopping:
                await c.run()

        for run in (a.run, b.run, run_c):
            tasks.start_soon(run)
        await _until(lambda: _spread(a, b, c) == [1, 1, 1], seconds=10)
        stopping.cancel()
        took = await _until(lambda: _all_held(a, b), seconds=TUNED.lease_duration_s)
        tasks.cancel_scope.cancel()
    assert not c.held
    assert took < TUNED.retry_period_s * 1.2 * 3 + 0.5, took
    assert work.overlaps == []


async def test_a_shard_taken_by_another_holder_stops_only_that_shard(
    transport: KubeTransport, namespace: str
) -> None:
    work = Work()
    a = work.elector(transport, namespace, "a", shards=2)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(a.run)
        await _until(lambda: a.held == {0, 1}, seconds=10)
        await transport.request(
            "PATCH",
            f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{NAME}-shard-1",
            body={"spec": {"holderIdentity": "intruder"}},
            content_type=MERGE_PATCH,
        )
        await _until(lambda: a.held == {0}, seconds=TUNED.retry_period_s * 3)
        # The intruder never renews: once its lease expired on a's clock, a takes it back.
        took = await _until(lambda: a.held == {0, 1}, seconds=TUNED.lease_duration_s + 2)
        tasks.cancel_scope.cancel()
    assert ("a", "lose", 1) in [entry[1:] for entry in work.log]
    assert ("a", "lose", 0) not in [entry[1:] for entry in work.log[:-2]]
    assert took >= TUNED.lease_duration_s - TUNED.retry_period_s * 1.2 - 0.5, took


async def test_a_replica_cut_off_from_the_apiserver_gives_up_its_shards_then_rejoins(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """Cut off: every shard's work stops within the renew deadline (before anyone may take
    the shards over); the process goes on, and once the apiserver answers again it is a member
    again and holds its shards."""
    work = Work()
    async with killable(kube, tmp_path) as (proxy, through):
        a = work.elector(through, namespace, "a", shards=2)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(a.run)
            await _until(lambda: a.held == {0, 1}, seconds=10)
            proxy.mode = "reset"
            proxy.reset()
            cut = time.monotonic()
            stopped = await _until(
                lambda: not a.member and sum(e[2] == "lose" for e in work.log) == 2, seconds=10
            )
            lose_times = [t - cut for t, _, what, _ in work.log if what == "lose"]
            losses = sorted(entry[1:] for entry in work.log if entry[2] == "lose")
            await anyio.sleep(TUNED.lease_duration_s)  # still cut off: still nothing held
            assert not a.held
            proxy.mode = "forward"
            rejoined = await _until(lambda: a.held == {0, 1}, seconds=TUNED.lease_duration_s * 3)
            tasks.cancel_scope.cancel()
    print(f"\nshards given up {lose_times} s after the cut; rejoined {rejoined:.2f} s after")
    assert losses == [("a", "lose", 0), ("a", "lose", 1)]
    # Within the renew deadline (+ the work's stop), before anyone may take the shards.
    assert max(lose_times) < TUNED.lease_duration_s, lose_times
    assert stopped < TUNED.lease_duration_s, stopped
