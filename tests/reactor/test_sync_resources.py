"""CRD mode's writer side with fakes through the constructor: status writes coalesce, our own
status writes cause no work, Events of one reason are aggregated per window, a Sync's spec
reaches the controller. The real API server round trips are in tests/e2e/test_crd_mode.py."""

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any

import anyio

from aioreconcile.engine.applying import ApplyOptions
from aioreconcile.engine.changeset import ChangeSet
from aioreconcile.engine.config import DataRef, SyncSpec
from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.inventory import Inventory
from aioreconcile.engine.metrics import Registry
from aioreconcile.engine.model import JsonObject, ObjectRef
from aioreconcile.engine.outcomes import Reason
from aioreconcile.reactor.controlling import Controller
from aioreconcile.reactor.ports import Cluster, GitSource, InventoryStore
from aioreconcile.reactor.resources import SyncResources
from aioreconcile.reactor.tracing import CommitInfo, NoTracing, SpanScope, Tracing
from tests.reactor.fakes import FakeCluster, FakeGitSource, FakeRenderer, NoWatcher

A = "a" * 40


class Client:
    """Records what the writer sends (the SyncResourceClient port)."""

    def __init__(self) -> None:
        self.statuses: list[JsonObject] = []
        self.events: list[JsonObject] = []
        self.finalizers: list[bool] = []

    async def write_status(self, namespace: str, name: str, status: JsonObject) -> None:
        self.statuses.append(status)

    async def set_finalizer(self, namespace: str, name: str, *, present: bool) -> None:
        self.finalizers.append(present)

    async def record_event(self, namespace: str, name: str, event: JsonObject) -> None:
        self.events.append(event)

    async def release(self, refs: Sequence[ObjectRef], *, sync: str) -> int:
        return 0

    async def delete_inventory(self, namespace: str, name: str) -> None:
        return None

    async def write_receiver_status(self, namespace: str, name: str, status: JsonObject) -> None:
        return None

    async def read_data(self, ref: DataRef) -> Mapping[str, bytes] | None:
        return None


LEFT = ObjectRef("", "ConfigMap", "team", "left", "v1")


class NoInventory:
    """An inventory store holding one object (``LEFT``) from an earlier apply."""

    key = "team/aioreconcile-inventory-app"

    async def load(self) -> Inventory | None:
        return Inventory.of([LEFT])

    async def save(self, inventory: Inventory, *, revision: str) -> None:
        return None


class Deletions(FakeCluster):
    def __init__(self) -> None:
        super().__init__()
        self.deleted: list[ObjectRef] = []

    async def delete(self, refs: Sequence[ObjectRef], options: ApplyOptions) -> ChangeSet:
        self.deleted += refs
        return await super().delete(refs, options)


class Parts:
    def __init__(self) -> None:
        self.git = FakeGitSource(A)
        self.git.refuse = False
        self.as_account = Deletions()

    def source(self, spec: SyncSpec) -> GitSource:
        return self.git

    def inventory(self, namespace: str, name: str) -> InventoryStore:
        return NoInventory()

    def cluster(self, spec: SyncSpec) -> Cluster | None:
        return self.as_account if spec.service_account is not None else None


def sync_object(generation: int = 1, **metadata: Any) -> JsonObject:
    return {
        "apiVersion": "aioreconcile.dev/v1alpha1",
        "kind": "Sync",
        "metadata": {
            "name": "shop",
            "namespace": "team",
            "generation": generation,
            "resourceVersion": str(generation),
            "finalizers": ["aioreconcile.dev/finalizer"],
            **metadata,
        },
        "spec": {"source": {"url": "git://example/x", "interval": "1h"}},
    }


def event(obj: JsonObject) -> WatchEvent:
    return WatchEvent(EventType.MODIFIED, ObjectRef.of(obj), obj)


@asynccontextmanager
async def running(
    client: Client, registry: Registry | None = None, tracing: Tracing | None = None
) -> AsyncIterator[SyncResources]:
    cluster = FakeCluster()
    holder: list[SyncResources] = []
    controller = Controller(
        [],
        cluster=cluster,
        render=FakeRenderer({A: []}),
        sources={},
        inventories={},
        watcher=NoWatcher(),
        registry=registry or Registry(),
        tracing=tracing,
        on_change=lambda state: holder[0].on_change(state),
    )
    resources = SyncResources(
        controller=controller,
        client=client,
        parts=Parts(),
        cluster=cluster,
        registry=Registry(),
        status_period_s=0.2,
        event_window_s=0.5,
    )
    holder.append(resources)
    async with anyio.create_task_group() as tasks:
        await tasks.start(controller.run)
        await tasks.start(resources.run)
        try:
            yield resources
        finally:
            tasks.cancel_scope.cancel()


async def until(check: Any) -> None:
    with anyio.fail_after(5):
        while not check():
            await anyio.sleep(0.01)


def ready(status: JsonObject) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"])


async def test_a_sync_object_is_reconciled_and_its_status_written_once() -> None:
    client = Client()
    async with running(client) as resources:
        resources.on_event(event(sync_object()))
        await until(lambda: client.statuses and ready(client.statuses[-1]))
        await anyio.sleep(0.5)  # more periods pass: nothing new to write
        written = list(client.statuses)
        # Our own status write comes back as a MODIFIED event with the same generation.
        echoed = sync_object()
        echoed["status"] = written[-1]
        echoed["metadata"]["resourceVersion"] = "99"
        resources.on_event(event(echoed))
        await anyio.sleep(0.5)
        state = resources.controller.states["team.shop"]
    assert client.statuses == written  # no write caused by our own write
    assert state.reconciles == 1  # and no reconcile
    assert written[-1]["observedGeneration"] == 1
    assert written[-1]["lastAppliedRevision"] == A


async def test_a_storm_of_state_changes_is_a_few_status_writes_and_one_event_series() -> None:
    client = Client()
    async with running(client) as resources:
        resources.on_event(event(sync_object()))
        await until(lambda: client.statuses and ready(client.statuses[-1]))
        state = resources.controller.states["team.shop"]
        before = len(client.statuses)
        started = anyio.current_time()
        for _ in range(200):  # 200 heals, as fast as they come
            state.heals += 1
            state.last_healed = "ConfigMap team/x (configured; changed by kubectl)"
            resources.on_change(state)
            await anyio.sleep(0.002)
        seconds = anyio.current_time() - started
        await anyio.sleep(1.2)  # the event window ends, the counted events go out
    writes = len(client.statuses) - before
    healed = [e for e in client.events if e["reason"] == "Healed"]
    assert 1 <= writes <= seconds / 0.2 + 2
    assert client.statuses[-1]["driftHeals"] == 200
    assert 1 <= len(healed) <= 2 + seconds / 0.5
    assert sum((e.get("series") or {}).get("count", 1) for e in healed) >= 2
    assert sum(e["note"].count("drifted objects") for e in healed) == len(healed)


async def test_an_invalid_spec_is_stalled_and_nothing_is_reconciled() -> None:
    client = Client()
    async with running(client) as resources:
        bad = sync_object()
        bad["spec"]["source"]["ref"] = "main\u2028x"
        resources.on_event(event(bad))
        await until(lambda: bool(client.statuses))
        assert "team.shop" not in resources.controller.states
    conditions = {c["type"]: c for c in client.statuses[-1]["conditions"]}
    assert conditions["Ready"]["reason"] == "InvalidSpec"
    assert conditions["Stalled"]["status"] == "True"
    assert "spec.source.ref" in conditions["Ready"]["message"]
    assert [e["reason"] for e in client.events] == ["InvalidSpec"]


async def test_a_new_sync_gets_the_finalizer_and_a_requested_reconcile_is_handled() -> None:
    client = Client()
    async with running(client) as resources:
        bare = sync_object()
        bare["metadata"]["finalizers"] = []
        resources.on_event(event(bare))
        await until(lambda: client.finalizers == [True])
        await until(lambda: client.statuses and ready(client.statuses[-1]))
        asked = sync_object(annotations={"reconcile.aioreconcile.dev/requestedAt": "now-1"})
        resources.on_event(event(asked))
        await until(lambda: client.statuses[-1].get("lastHandledReconcileAt") == "now-1")
        state = resources.controller.states["team.shop"]
    assert state.reconciles == 2
    assert state.reason == Reason.SUCCEEDED


class Commits(NoTracing):
    """Keeps what each reconcile's trace was opened with."""

    def __init__(self) -> None:
        self.infos: list[CommitInfo] = []

    def commit(self, info: CommitInfo) -> AbstractContextManager[SpanScope]:
        self.infos.append(info)
        return super().commit(info)


TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_a_request_recorded_by_another_replica_carries_its_hint_once() -> None:
    """A webhook another replica recorded on the Sync (requestedAt, the revision hint, the
    request's traceparent) is reconciled with the hint and linked to the request, as a push is;
    a later hand-made requestedAt that leaves the old hint in place does not reuse it, and a
    hint that is no commit id is ignored."""
    client = Client()
    registry = Registry()
    commits = Commits()

    def hinted(verdict: str) -> str:
        return f'aioreconcile_push_hints_total{{sync="team.shop",hint="{verdict}"}} 1'

    async with running(client, registry, commits) as resources:
        resources.on_event(event(sync_object()))
        await until(lambda: client.statuses and ready(client.statuses[-1]))
        for requested, hint in (("r1", A), ("r2", A), ("r3", "not a sha"), ("r4", "b" * 40)):
            annotations = {
                "reconcile.aioreconcile.dev/requestedAt": requested,
                "reconcile.aioreconcile.dev/revision": hint,
                "reconcile.aioreconcile.dev/traceparent": TRACE,
            }
            resources.on_event(event(sync_object(annotations=annotations)))
            await until(lambda r=requested: client.statuses[-1].get("lastHandledReconcileAt") == r)
        state = resources.controller.states["team.shop"]
    exposition = registry.exposition()
    assert state.reconciles == 5
    assert hinted("head") in exposition  # r1 only
    assert hinted("not-head") in exposition  # r4
    assert state.last_applied_revision == A  # the head, whatever the hint said
    triggers = [(info.trigger, info.link_traceparent) for info in commits.infos]
    assert triggers == [
        ("poll", None),
        ("push", TRACE),
        ("poll", None),
        ("poll", None),
        ("push", TRACE),
    ]


async def test_a_requested_at_that_could_forge_a_line_is_not_acted_on_nor_copied() -> None:
    client = Client()
    async with running(client) as resources:
        resources.on_event(event(sync_object()))
        await until(lambda: client.statuses and ready(client.statuses[-1]))
        forged = {"reconcile.aioreconcile.dev/requestedAt": "now\nlevel=error forged"}
        resources.on_event(event(sync_object(annotations=forged)))
        await anyio.sleep(0.5)
        state = resources.controller.states["team.shop"]
    assert state.reconciles == 1
    assert all("lastHandledReconcileAt" not in status for status in client.statuses)


async def test_a_deleted_sync_whose_spec_is_refused_is_pruned_as_its_service_account() -> None:
    client = Client()
    async with running(client) as resources:
        bad = sync_object()
        bad["spec"]["source"]["ref"] = "main\u2028x"
        bad["spec"]["serviceAccountName"] = "deployer"
        resources.on_event(event(bad))
        await until(lambda: bool(client.statuses))
        deleting = dict(bad)
        deleting["metadata"] = bad["metadata"] | {"deletionTimestamp": "2026-12-01T00:00:00Z"}
        resources.on_event(event(deleting))
        await until(lambda: client.finalizers[-1:] == [False])
        parts = resources.parts
    assert isinstance(parts, Parts)
    assert parts.as_account.deleted == [LEFT]  # as the account, never as the controller
    assert [e["reason"] for e in client.events][-1] == "Finalized"
