"""CRD mode with ``--shards``: a replica acts only on the Syncs of the shards it holds. Gaining
a shard starts its Syncs from the watch cache; losing one cancels their work under way and
writes nothing more for them; a bad shard label is refused in the Sync's status. (The Leases
themselves: tests/integration/test_sharding.py; three processes: tests/e2e/test_sharding.py.)"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from aioreconcile.engine.metrics import Registry
from aioreconcile.engine.model import JsonObject
from aioreconcile.engine.sharding import SHARD_LABEL, place
from aioreconcile.reactor.controlling import Controller
from aioreconcile.reactor.resources import SyncResources
from tests.reactor.fakes import FakeCluster, FakeGitSource, FakeRenderer, NoWatcher
from tests.reactor.test_sync_resources import A, Client, Parts, event, ready, sync_object, until

SHARDS = 4
SHOP = place("team", "shop", None, SHARDS).shard  # the shard "team/shop" hashes to
OTHER = (SHOP + 1) % SHARDS


class SlowGit(FakeGitSource):
    """A fetch that waits until the test lets it go; says whether it was cancelled."""

    def __init__(self) -> None:
        super().__init__(A)
        self.refuse = False
        self.fetching = anyio.Event()
        self.release = anyio.Event()
        self.cancelled = False

    async def fetch(self, *, not_before: float | None = None) -> str:
        self.fetches += 1
        self.fetching.set()
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        return self.head


@asynccontextmanager
async def running(client: Client, parts: Parts | None = None) -> AsyncIterator[SyncResources]:
    cluster = FakeCluster()
    holder: list[SyncResources] = []
    controller = Controller(
        [],
        cluster=cluster,
        render=FakeRenderer({A: []}),
        sources={},
        inventories={},
        watcher=NoWatcher(),
        registry=Registry(),
        on_change=lambda state: holder[0].on_change(state),
    )
    resources = SyncResources(
        controller=controller,
        client=client,
        parts=parts or Parts(),
        cluster=cluster,
        registry=Registry(),
        status_period_s=0.05,
        shards=SHARDS,
    )
    holder.append(resources)
    async with anyio.create_task_group() as tasks:
        await tasks.start(controller.run)
        await tasks.start(resources.run)
        try:
            yield resources
        finally:
            tasks.cancel_scope.cancel()


def labelled(shard: str) -> JsonObject:
    return sync_object(labels={SHARD_LABEL: shard})


async def test_a_sync_of_a_shard_not_held_is_not_touched_until_the_shard_is_gained() -> None:
    client = Client()
    async with running(client) as resources:
        resources.gain_shard(OTHER)
        resources.on_event(event(sync_object()))
        await anyio.sleep(0.3)
        assert client.statuses == []
        assert client.finalizers == []
        assert resources.controller.states == {}

        resources.gain_shard(SHOP)  # from the watch cache: no new event needed
        await until(lambda: client.statuses and ready(client.statuses[-1]))
    assert resources.held_shards == {SHOP, OTHER}


async def test_losing_a_shard_cancels_its_reconcile_under_way_and_writes_nothing_more() -> None:
    client = Client()
    parts = Parts()
    slow = SlowGit()
    parts.git = slow
    async with running(client, parts) as resources:
        resources.gain_shard(SHOP)
        resources.on_event(event(sync_object()))
        with anyio.fail_after(5):
            await slow.fetching.wait()
        assert "team.shop" in resources.controller.states
        with anyio.fail_after(2):
            await resources.lose_shard(SHOP)  # returns once the reconcile has ended
        assert slow.cancelled
        assert resources.controller.states == {}
        written = len(client.statuses)
        slow.release.set()
        await anyio.sleep(0.3)
        # An event for the Sync while its shard is elsewhere: still nothing.
        resources.on_event(event(sync_object(generation=2)))
        await anyio.sleep(0.3)
    assert len(client.statuses) == written
    assert resources.controller.states == {}
    assert resources.held_shards == set()


async def test_a_shard_label_pins_the_sync_and_moving_it_away_stops_acting_on_it() -> None:
    client = Client()
    async with running(client) as resources:
        resources.gain_shard(OTHER)
        resources.on_event(event(labelled(str(OTHER))))  # pinned to a shard we hold
        await until(lambda: client.statuses and ready(client.statuses[-1]))
        assert "team.shop" in resources.controller.states

        moved = labelled(str((OTHER + 1) % SHARDS))
        moved["metadata"]["generation"] = 1
        resources.on_event(event(moved))
        await until(lambda: "team.shop" not in resources.controller.states)
        written = len(client.statuses)
        await anyio.sleep(0.3)
    assert len(client.statuses) == written


async def test_a_bad_shard_label_is_refused_in_the_status_by_the_hash_shards_holder() -> None:
    client = Client()
    async with running(client) as resources:
        resources.gain_shard(SHOP)  # the bad label leaves it on its hash's shard
        resources.on_event(event(labelled("seven")))
        await until(lambda: bool(client.statuses))
        status: dict[str, Any] = client.statuses[-1]
        assert resources.controller.states == {}
    condition = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert condition["status"] == "False"
    assert condition["reason"] == "InvalidSpec"
    assert SHARD_LABEL in condition["message"]
    assert "'seven'" in condition["message"]


async def test_a_shard_lost_and_gained_again_starts_its_syncs_again_from_the_cache() -> None:
    client = Client()
    async with running(client) as resources:
        resources.gain_shard(SHOP)
        resources.on_event(event(sync_object()))
        await until(lambda: client.statuses and ready(client.statuses[-1]))
        await resources.lose_shard(SHOP)
        assert resources.controller.states == {}

        resources.gain_shard(SHOP)  # no new watch event: the cache still has the Sync
        await until(lambda: "team.shop" in resources.controller.states)
        await until(lambda: resources.controller.states["team.shop"].reconciles == 1)
