"""Leader election against the real apiserver: one leader of two, release on a graceful stop,
takeover after the lease duration when the leader vanishes, 409 conflicts, and a leader that
cannot renew or sees another holder stepping down."""

import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest

from aioreconcile.adapters.kube.leasing import LeaseElector
from aioreconcile.adapters.kube.transport import MERGE_PATCH, KubeTransport
from aioreconcile.engine.errors import LeadershipLost
from aioreconcile.engine.leadership import LeaseTimings
from aioreconcile.reactor.leading import lead
from aioreconcile.testing.faults import start_proxy
from aioreconcile.testing.pytest_plugin import Kube
from tests.integration.test_watching import kubeconfig_via

pytestmark = pytest.mark.integration

TUNED = LeaseTimings(lease_duration_s=3, renew_deadline_s=2.0, retry_period_s=0.5)
LEASE = "aioreconcile"


@pytest.fixture
async def transport(kube: Kube) -> AsyncIterator[KubeTransport]:
    async with await KubeTransport.connect(kube.kubeconfig) as opened:
        yield opened


def _elector(
    transport: KubeTransport,
    namespace: str,
    identity: str,
    changes: list[tuple[str, bool]] | None = None,
) -> LeaseElector:
    return LeaseElector(
        transport,
        namespace=namespace,
        name=LEASE,
        identity=identity,
        timings=TUNED,
        on_change=None if changes is None else lambda leading: changes.append((identity, leading)),
    )


def _path(namespace: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}"


async def _spec(transport: KubeTransport, namespace: str) -> dict[str, object]:
    spec = (await transport.request("GET", _path(namespace))).body["spec"]
    assert isinstance(spec, dict)
    return spec


async def _run_candidate(elector: LeaseElector) -> None:
    """acquire, then hold: a candidate whose process dies is this task cancelled (no release)."""
    await elector.acquire()
    await elector.hold()


async def _wait_leading(elector: LeaseElector, *, seconds: float) -> float:
    started = time.monotonic()
    with anyio.fail_after(seconds):
        while not elector.leading:
            await anyio.sleep(0.01)
    return time.monotonic() - started


async def test_of_two_candidates_exactly_one_leads_and_the_other_stands_by(
    transport: KubeTransport, namespace: str
) -> None:
    changes: list[tuple[str, bool]] = []
    a, b = (_elector(transport, namespace, name, changes) for name in ("a", "b"))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_run_candidate, a)
        tasks.start_soon(_run_candidate, b)
        with anyio.fail_after(5):
            while not (a.leading or b.leading):
                await anyio.sleep(0.01)
        leader, standby = (a, b) if a.leading else (b, a)
        await anyio.sleep(TUNED.lease_duration_s * 2)  # several renewals and retries
        assert leader.leading
        assert not standby.leading
        assert standby.holder == leader.identity
        spec = await _spec(transport, namespace)
        assert spec["holderIdentity"] == leader.identity
        assert spec["leaseDurationSeconds"] == 3
        assert spec["leaseTransitions"] == 0
        tasks.cancel_scope.cancel()
    assert changes == [(leader.identity, True)]


async def test_a_graceful_stop_releases_the_lease_and_the_standby_leads_within_a_retry_period(
    transport: KubeTransport, namespace: str
) -> None:
    a, b = _elector(transport, namespace, "a"), _elector(transport, namespace, "b")
    stopped_writing = anyio.Event()

    async def work() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            stopped_writing.set()

    async with anyio.create_task_group() as tasks:
        leader_scope = anyio.CancelScope()

        async def leader() -> None:
            with leader_scope:
                await lead(a, work)

        tasks.start_soon(leader)
        await _wait_leading(a, seconds=5)
        tasks.start_soon(_run_candidate, b)
        await anyio.sleep(1.0)  # b has seen a's Lease renewed: it waits
        assert not b.leading

        leader_scope.cancel()
        waited = await _wait_leading(b, seconds=TUNED.lease_duration_s)
        assert stopped_writing.is_set()
        tasks.cancel_scope.cancel()
    # Released: b needed at most one jittered retry period, not the lease duration.
    assert waited < TUNED.retry_period_s * 1.2 + 0.5, waited
    spec = await _spec(transport, namespace)
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 1


async def test_a_leader_that_vanishes_without_releasing_is_replaced_after_the_lease_duration(
    transport: KubeTransport, namespace: str
) -> None:
    a, b = _elector(transport, namespace, "a"), _elector(transport, namespace, "b")
    async with anyio.create_task_group() as tasks:
        killed = anyio.CancelScope()

        async def leader() -> None:
            with killed:
                await _run_candidate(a)  # cancelled: nothing released, as after a SIGKILL

        tasks.start_soon(leader)
        await _wait_leading(a, seconds=5)
        tasks.start_soon(_run_candidate, b)
        await anyio.sleep(1.0)
        killed.cancel()
        waited = await _wait_leading(b, seconds=TUNED.lease_duration_s + 3)
        tasks.cancel_scope.cancel()
    # b's clock for a's last renewal started when b saw it: at least lease - retry ago.
    lower = TUNED.lease_duration_s - TUNED.retry_period_s
    assert lower <= waited < TUNED.lease_duration_s + TUNED.retry_period_s * 1.2 + 0.5, waited
    assert (await _spec(transport, namespace))["holderIdentity"] == "b"


async def test_a_renewal_whose_resource_version_is_stale_re_reads_and_renews(
    transport: KubeTransport, namespace: str
) -> None:
    """Someone else's write (here a label) makes the leader's guarded PUT a 409; the leader
    re-reads, sees it still holds the Lease, renews, and keeps what the other writer set."""
    a = _elector(transport, namespace, "a")
    assert await a.try_acquire_or_renew()
    await transport.request(
        "PATCH",
        _path(namespace),
        body={"metadata": {"labels": {"team": "platform"}}},
        content_type=MERGE_PATCH,
    )
    before = (await _spec(transport, namespace))["renewTime"]
    await anyio.sleep(0.01)

    assert await a.try_acquire_or_renew()

    lease = (await transport.request("GET", _path(namespace))).body
    assert lease["spec"]["holderIdentity"] == "a"
    assert lease["spec"]["renewTime"] != before
    assert lease["metadata"]["labels"] == {"team": "platform"}


async def test_two_candidates_racing_for_an_expired_lease_make_exactly_one_leader(
    transport: KubeTransport, namespace: str
) -> None:
    gone = _elector(transport, namespace, "gone")
    assert await gone.try_acquire_or_renew()
    a, b = _elector(transport, namespace, "a"), _elector(transport, namespace, "b")
    assert not await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    await anyio.sleep(TUNED.lease_duration_s + 0.1)  # "gone" never renewed

    results: dict[str, bool] = {}

    async def attempt(elector: LeaseElector) -> None:
        results[elector.identity] = await elector.try_acquire_or_renew()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(attempt, a)
        tasks.start_soon(attempt, b)
    assert sorted(results.values()) == [False, True]
    winner = "a" if results["a"] else "b"
    spec = await _spec(transport, namespace)
    assert spec["holderIdentity"] == winner
    assert spec["leaseTransitions"] == 1


async def test_a_leader_that_sees_another_holder_stops_leading_at_once(
    transport: KubeTransport, namespace: str
) -> None:
    a = _elector(transport, namespace, "a")
    work_cancelled = anyio.Event()

    async def work() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            work_cancelled.set()

    lost: list[LeadershipLost] = []

    async def leader() -> None:
        try:
            await lead(a, work)
        except LeadershipLost as e:
            lost.append(e)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(leader)
        await _wait_leading(a, seconds=5)
        # An operator (or a candidate with a broken clock) writes itself in.
        await transport.request(
            "PATCH",
            _path(namespace),
            body={"spec": {"holderIdentity": "intruder"}},
            content_type=MERGE_PATCH,
        )
        with anyio.fail_after(TUNED.retry_period_s * 3):
            await work_cancelled.wait()
    assert len(lost) == 1
    assert not a.leading
    assert (await _spec(transport, namespace))["holderIdentity"] == "intruder"  # not released


async def test_a_leader_that_cannot_reach_the_apiserver_stops_at_the_renew_deadline(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    server = urlsplit(kube.control_plane.server)
    assert server.hostname is not None
    assert server.port is not None
    changes: list[tuple[str, bool]] = []
    async with start_proxy(server.hostname, server.port) as proxy:
        via = kubeconfig_via(kube.kubeconfig, proxy.port, tmp_path)
        transport = await KubeTransport.connect(via)
    # The proxy is gone: every request of this transport is refused from now on.
    async with transport:
        a = _elector(transport, namespace, "a", changes)
        a._leading = True
        renewed_at = time.monotonic()
        a._renewed_at = renewed_at
        with anyio.fail_after(TUNED.renew_deadline_s + 2):
            await a.hold()
        stepped_down_after = time.monotonic() - renewed_at
    assert not a.leading
    assert changes == [("a", False)]
    assert TUNED.renew_deadline_s <= stepped_down_after < TUNED.lease_duration_s, stepped_down_after
