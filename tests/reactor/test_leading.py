"""Only the leader writes: ``lead`` runs the work between acquire and loss, releases only after
the work ended, and a standby keeps its watches on the leader's kinds and its pushes queued."""

from typing import Any, cast

import anyio

from aioreconcile.engine.config import GitSourceSpec, SyncSpec
from aioreconcile.engine.errors import InventoryError, LeadershipLost
from aioreconcile.engine.inventory import Inventory
from aioreconcile.engine.metrics import Registry
from aioreconcile.engine.model import ObjectRef
from aioreconcile.engine.triggers import Push
from aioreconcile.reactor.controlling import Controller
from aioreconcile.reactor.leading import lead, warm_watches
from tests.reactor.fakes import FakeGitSource, NoWatcher

DEPLOYMENT = ObjectRef("apps", "Deployment", "shop", "web", "v1")
CONFIG = ObjectRef("", "ConfigMap", "shop", "settings", "v1")


class FakeElector:
    """The Elector port, driven by the test: ``elect`` / ``lose`` end acquire / hold."""

    identity = "me"

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.leading = False
        self.holder = ""
        self._elected = anyio.Event()
        self._lost = anyio.Event()

    def elect(self) -> None:
        self._elected.set()

    def lose(self) -> None:
        self._lost.set()

    async def acquire(self) -> None:
        await self._elected.wait()
        self.leading = True
        self.events.append("acquired")

    async def hold(self) -> None:
        await self._lost.wait()
        self.leading = False
        self.events.append("lost")

    async def release(self) -> bool:
        self.events.append("released")
        self.leading = False
        return True


async def test_the_work_starts_only_once_elected_and_the_standby_task_stops_then() -> None:
    events: list[str] = []
    elector = FakeElector(events)

    async def standby() -> None:
        events.append("standby")
        try:
            await anyio.sleep_forever()
        finally:
            events.append("standby stopped")

    async def work() -> None:
        events.append("work")
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: lead(elector, work, standby=standby))
        await anyio.wait_all_tasks_blocked()
        assert events == ["standby"]
        elector.elect()
        await anyio.wait_all_tasks_blocked()
        assert events == ["standby", "acquired", "standby stopped", "work"]
        tasks.cancel_scope.cancel()


async def test_a_graceful_stop_ends_the_work_before_releasing_the_lease() -> None:
    events: list[str] = []
    elector = FakeElector(events)

    async def work() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)  # cleanup that takes a while
            events.append("work ended")

    elector.elect()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: lead(elector, work))
        await anyio.wait_all_tasks_blocked()
        tasks.cancel_scope.cancel()
    assert events == ["acquired", "work ended", "released"]


async def test_a_lost_lease_cancels_the_work_at_once_and_raises_without_releasing() -> None:
    events: list[str] = []
    elector = FakeElector(events)

    async def work() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            events.append("work cancelled")

    elector.elect()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            caught: list[LeadershipLost] = []

            async def leader() -> None:
                try:
                    await lead(elector, work)
                except LeadershipLost as e:
                    caught.append(e)

            tasks.start_soon(leader)
            await anyio.wait_all_tasks_blocked()
            elector.lose()
    assert len(caught) == 1
    assert events == ["acquired", "lost", "work cancelled"]


class Store:
    key = "aioreconcile/inventory"

    def __init__(self, inventory: Inventory | None = None, *, broken: bool = False) -> None:
        self.inventory, self.broken = inventory, broken

    async def load(self) -> Inventory | None:
        if self.broken:
            raise InventoryError("data.entries.json is not JSON")
        return self.inventory

    async def save(self, inventory: Inventory, *, revision: str) -> None:
        raise AssertionError("a standby never writes an inventory")


async def test_a_standby_watches_the_kinds_the_inventories_list_and_skips_unreadable_ones() -> None:
    watcher = NoWatcher()
    warm: list[bool] = []
    inventories = {
        "shop": Store(Inventory.of([DEPLOYMENT, CONFIG])),
        "new": Store(None),  # never applied yet
        "broken": Store(broken=True),
    }
    with anyio.move_on_after(0.2):
        await warm_watches(
            cast(Any, inventories), watcher, every_s=60, on_warm=lambda: warm.append(True)
        )
    assert watcher.kinds == {DEPLOYMENT, CONFIG}
    assert warm == [True]


async def test_a_push_received_while_standing_by_is_acted_on_once_leading() -> None:
    hint = "a" * 40
    registry = Registry()
    source = FakeGitSource(hint)  # refuses every commit: the reconcile stops after the fetch
    controller = Controller(
        [SyncSpec(name="app", source=GitSourceSpec(url="git://example/x"))],
        cluster=cast(Any, None),
        render=cast(Any, None),
        sources={"app": source},
        inventories={},
        watcher=NoWatcher(),
        registry=registry,
    )
    controller.push(Push("app", hint))
    await anyio.sleep(0.05)
    assert source.fetches == 0  # standing by: nothing runs

    async with anyio.create_task_group() as tasks:
        await tasks.start(controller.run)  # elected
        with anyio.fail_after(5):
            while source.fetches == 0:
                await anyio.sleep(0.01)
        tasks.cancel_scope.cancel()
    assert 'aioreconcile_push_hints_total{sync="app",hint="head"} 1.0' in registry.exposition()
