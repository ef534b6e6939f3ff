"""A poll asks the server for the ref's head (``ls-remote``) only when that answer could spare
the fetch: the sync applied a head successfully here before. A sync new to this process (a
start, a shard taken over), whose spec changed, or whose last reconcile failed fetches the head
at once: with 100 Syncs of one repository gained together, that is one shared fetch instead of
100 ``ls-remote`` calls before it."""

import anyio

from aioreconcile.engine.config import GitSourceSpec, SyncSpec
from aioreconcile.engine.outcomes import Reason
from tests.reactor.test_unchanged_syncs import (
    A,
    B,
    CountingRenderer,
    FailingCluster,
    Source,
    attempted,
    running,
)


async def polled(source: Source, fetches: int, resolves: int) -> None:
    with anyio.fail_after(5):
        while source.fetches < fetches or source.resolves < resolves:
            await anyio.sleep(0.005)


async def test_a_sync_new_to_the_process_fetches_the_head_without_listing_the_ref_first() -> None:
    cluster, source, renderer = FailingCluster(), Source(A), CountingRenderer()
    async with running(cluster, source, renderer) as made:
        await attempted(made, A, reason=Reason.SUCCEEDED)
        assert (source.resolves, source.fetches) == (0, 1)
        assert cluster.writes[-1][1] == A


async def test_an_applied_syncs_poll_lists_the_ref_and_fetches_only_when_it_moved() -> None:
    cluster, source, renderer = FailingCluster(), Source(A), CountingRenderer()
    async with running(cluster, source, renderer) as made:
        await attempted(made, A, reason=Reason.SUCCEEDED)
        made.poll("app")
        await polled(source, fetches=1, resolves=1)
        await anyio.sleep(0.05)
        assert (source.resolves, source.fetches) == (1, 1)  # unmoved: no fetch
        source.head = B
        made.poll("app")
        await attempted(made, B, reason=Reason.SUCCEEDED)
        assert (source.resolves, source.fetches) == (2, 2)


async def test_a_changed_or_failed_sync_fetches_without_listing_the_ref() -> None:
    cluster, source, renderer = FailingCluster(), Source(A), CountingRenderer()
    cluster.failing = True
    async with running(cluster, source, renderer) as made:
        await attempted(made, A, reason=Reason.APPLY_FAILED)
        made.poll("app")
        await polled(source, fetches=2, resolves=0)
        assert source.resolves == 0  # failed last time: the head is fetched whatever it is
        cluster.failing = False
        made.upsert(
            SyncSpec(name="app", source=GitSourceSpec(url="git://example/x", path="other")),
            source=source,
            inventory=None,
        )
        await polled(source, fetches=3, resolves=0)
        await attempted(made, A, reason=Reason.SUCCEEDED)
        assert source.resolves == 0
