"""``after_reconcile`` (run: a full gc and malloc_trim, holding the event loop) runs after a
reconcile that ran alone, but once for a burst of overlapping reconciles (a shard taken over,
a push to many syncs), when the last of them ends: once per reconcile, ~100 of them stalled
every other lane for their full collections."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from aioreconcile.engine.config import GitSourceSpec, SyncSpec
from aioreconcile.engine.metrics import Registry
from aioreconcile.engine.outcomes import Reason
from aioreconcile.reactor.controlling import Controller
from tests.reactor.fakes import FakeCluster, FakeGitSource, FakeRenderer, NoWatcher
from tests.reactor.test_unchanged_syncs import A, config_map

NAMES = [f"app-{i}" for i in range(4)]


@asynccontextmanager
async def running(cluster: FakeCluster, released: list[int]) -> AsyncIterator[Controller]:
    sources = {}
    for name in NAMES:
        source = FakeGitSource(A)
        source.refuse = False
        sources[name] = source
    made = Controller(
        [SyncSpec(name=n, source=GitSourceSpec(url=f"git://example/{n}")) for n in NAMES],
        cluster=cluster,
        render=FakeRenderer({A: [config_map("x")]}),
        sources=sources,
        inventories={},
        watcher=NoWatcher(),
        registry=Registry(),
        after_reconcile=lambda: released.append(sum(s.reconciling for s in made.states.values())),
    )
    async with anyio.create_task_group() as tasks:
        await tasks.start(made.run)
        try:
            yield made
        finally:
            tasks.cancel_scope.cancel()


async def succeeded(made: Controller, names: list[str]) -> None:
    with anyio.fail_after(5):
        while not all(made.states[n].reason == Reason.SUCCEEDED for n in names):
            await anyio.sleep(0.005)


async def test_overlapping_reconciles_release_memory_once_when_the_last_ends() -> None:
    cluster, released = FakeCluster(), list[int]()
    cluster.apply_gate = anyio.Event()  # every reconcile waits after its writes: they overlap
    async with running(cluster, released) as made:
        with anyio.fail_after(5):
            while sum(s.reconciling for s in made.states.values()) < len(NAMES):
                await anyio.sleep(0.005)
        cluster.apply_gate.set()
        await succeeded(made, NAMES)
        await anyio.sleep(0.05)
        assert released == [1]  # once, by the last of them (before: [4, 3, 2, 1])


async def test_a_reconcile_that_runs_alone_releases_memory_after_it() -> None:
    cluster, released = FakeCluster(), list[int]()
    async with running(cluster, released) as made:
        await succeeded(made, NAMES)
        await anyio.sleep(0.05)
        before = len(released)
        cluster.objects.clear()  # the next reconcile writes again
        made.request(NAMES[0])
        with anyio.fail_after(5):
            while len(released) == before:
                await anyio.sleep(0.005)
        assert released[-1] == 1  # within the reconcile (its trace's "after reconcile")
