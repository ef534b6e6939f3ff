"""Heals and syncs of one sync never interleave: a heal never writes an older commit's content.

The fake cluster holds a heal's write at a gate the test controls, so the interleaving (heal
under way, push, sync, heal write) is played out exactly, every time. A heal judges the newest
watch event's object it was queued for, and reads the object only when it has none.
"""

import copy
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import pytest

from aioreconcile.engine.applying import ApplyOptions, ApplyResult
from aioreconcile.engine.config import GitSourceSpec, SyncSpec
from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.metrics import Registry
from aioreconcile.engine.model import JsonObject, Manifest, ObjectRef
from aioreconcile.engine.planning import as_stored, our_fields
from aioreconcile.engine.triggers import Push
from aioreconcile.reactor import controlling
from aioreconcile.reactor.controlling import Controller, SyncState, _compact
from tests.reactor.fakes import FakeCluster, FakeGitSource, FakeRenderer, NoWatcher

A, B = "a" * 40, "b" * 40


def config_map(value: str) -> Manifest:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "shop"},
        "data": {"v": value},
    }
    return Manifest(ObjectRef.of(body), body, origin="settings.yaml")


REF = config_map("").ref


def git_source() -> FakeGitSource:
    source = FakeGitSource(A, history=[(A, B)])
    source.refuse = False
    return source


@asynccontextmanager
async def running(cluster: FakeCluster, source: FakeGitSource) -> AsyncIterator[Controller]:
    spec = SyncSpec(name="app", source=GitSourceSpec(url="git://example/x"), prune=False)
    made = Controller(
        [spec],
        cluster=cluster,
        render=FakeRenderer({A: [config_map("from-a")], B: [config_map("from-b")]}),
        sources={"app": source},
        inventories={},
        watcher=NoWatcher(),
        registry=Registry(),
        drift_debounce_s=0.0,
    )
    async with anyio.create_task_group() as tasks:
        await tasks.start(made.run)
        try:
            yield made
        finally:
            tasks.cancel_scope.cancel()


async def applied(made: Controller, sha: str) -> None:
    with anyio.fail_after(5):
        while made.states["app"].last_applied_revision != sha:
            await anyio.sleep(0.005)


def data(obj: JsonObject | None) -> object:
    return obj["data"] if obj is not None else None


async def test_a_heal_held_across_a_push_never_writes_the_old_commit_over_the_new_one() -> None:
    cluster, source = FakeCluster(), git_source()
    async with running(cluster, source) as made:
        await applied(made, A)
        # Someone edits the object; the heal is held before its write.
        cluster.heal_gate = anyio.Event()
        edited = cluster.edit(REF, lambda obj: obj["data"].update(v="edited"))
        made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, edited))
        with anyio.fail_after(5):
            await cluster.healing.wait()

        # Meanwhile B is pushed, and its sync gets every chance to run.
        source.head = B
        made.push(Push("app", B))
        await anyio.sleep(0.05)
        await anyio.wait_all_tasks_blocked()

        cluster.heal_gate.set()  # the heal goes on
        await applied(made, B)
        await anyio.sleep(0.05)
        await anyio.wait_all_tasks_blocked()

        final = cluster.objects[REF]
        assert data(final) == {"v": "from-b"}
        assert final["metadata"]["annotations"]["aioreconcile.dev/revision"] == B
        # Whatever the heal wrote was A's content stamped A, before B's sync wrote B.
        assert cluster.writes[-1] == (REF, B)


async def test_an_edit_made_while_a_sync_writes_is_judged_after_it_and_healed() -> None:
    cluster, source = FakeCluster(), git_source()
    async with running(cluster, source) as made:
        await applied(made, A)
        cluster.apply_gate = anyio.Event()
        source.head = B
        made.push(Push("app", B))
        with anyio.fail_after(5):
            await cluster.applied.wait()  # B is written; the sync has not recorded it yet

        edited = cluster.edit(REF, lambda obj: obj["data"].update(v="edited"))
        made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, edited))
        await anyio.sleep(0.05)
        assert data(cluster.objects[REF]) == {"v": "edited"}  # set aside, not healed yet

        cluster.apply_gate.set()
        await applied(made, B)
        with anyio.fail_after(5):
            while data(cluster.objects[REF]) != {"v": "from-b"}:
                await anyio.sleep(0.005)

        assert made.states["app"].heals == 1
        assert cluster.writes[-1] == (REF, B)


async def test_a_heal_writes_from_the_event_that_queued_it_without_reading_the_object() -> None:
    cluster, source = FakeCluster(), git_source()
    async with running(cluster, source) as made:
        await applied(made, A)
        writes, reads = len(cluster.writes), cluster.reads
        edited = cluster.edit(REF, lambda obj: obj["data"].update(v="edited"))

        made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, edited))
        with anyio.fail_after(5):
            while made.states["app"].heals < 1:
                await anyio.sleep(0.005)

        assert data(cluster.objects[REF]) == {"v": "from-a"}
        assert len(cluster.writes) == writes + 1
        assert cluster.reads == reads


async def test_past_the_limit_of_kept_events_a_heal_reads_the_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(controlling, "OBSERVED_LIMIT", 0)
    cluster, source = FakeCluster(), git_source()
    async with running(cluster, source) as made:
        await applied(made, A)
        reads = cluster.reads
        edited = cluster.edit(REF, lambda obj: obj["data"].update(v="edited"))

        made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, edited))
        with anyio.fail_after(5):
            while made.states["app"].heals < 1:
                await anyio.sleep(0.005)

        assert data(cluster.objects[REF]) == {"v": "from-a"}
        assert cluster.reads == reads + 1


async def test_a_heal_takes_the_newest_event_so_an_edit_undone_before_it_writes_nothing() -> None:
    cluster, source = FakeCluster(), git_source()
    async with running(cluster, source) as made:
        await applied(made, A)
        writes, reads = len(cluster.writes), cluster.reads
        # An edit, and its undoing reported before the heal runs: the heal judges the newest.
        edited = cluster.edit(REF, lambda obj: obj["data"].update(v="edited"))
        undone = cluster.edit(REF, lambda obj: obj["data"].update(v="from-a"))

        made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, edited))
        made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, undone))
        await anyio.sleep(0.05)
        await anyio.wait_all_tasks_blocked()

        assert len(cluster.writes) == writes
        assert cluster.reads == reads  # judged on the event, not read again
        assert made.states["app"].heals == 0
        assert made.states["app"].fight_pauses == 0


async def test_a_heal_set_aside_by_a_reconcile_reads_the_object_and_finds_it_as_stored() -> None:
    cluster, source = FakeCluster(), git_source()
    async with running(cluster, source) as made:
        await applied(made, A)
        cluster.apply_gate = anyio.Event()
        source.head = B
        made.push(Push("app", B))
        with anyio.fail_after(5):
            await cluster.applied.wait()  # B is written; the sync has not recorded it yet
        # An event about a change made (and undone) before B's write: set aside, then read.
        stale = copy.deepcopy(cluster.objects[REF])
        stale["data"]["v"] = "edited"
        stale["metadata"]["resourceVersion"] = "1"
        made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, stale))
        writes, reads = len(cluster.writes), cluster.reads

        cluster.apply_gate.set()
        await applied(made, B)
        await anyio.sleep(0.05)
        await anyio.wait_all_tasks_blocked()

        assert cluster.reads == reads + 1
        assert len(cluster.writes) == writes
        assert made.states["app"].heals == 0


async def test_an_object_another_sync_took_over_is_not_healed_nor_retried() -> None:
    cluster, source = FakeCluster(), git_source()
    async with running(cluster, source) as made:
        await applied(made, A)
        writes = len(cluster.writes)

        def adopted(obj: JsonObject) -> None:
            obj["metadata"]["labels"]["aioreconcile.dev/sync"] = "billing"
            obj["data"]["v"] = "billing's"

        made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, cluster.edit(REF, adopted)))
        await anyio.sleep(0.05)
        await anyio.wait_all_tasks_blocked()

        assert len(cluster.writes) == writes
        assert made.queue.depth == 0  # no retry


async def test_removing_a_sync_while_its_reconcile_waits_for_a_heal_finishes_both() -> None:
    """``remove`` waits for the sync's work without taking the event a reconcile waits on."""
    cluster, source = FakeCluster(), git_source()
    async with running(cluster, source) as made:
        await applied(made, A)
        cluster.heal_gate = anyio.Event()
        edited = cluster.edit(REF, lambda obj: obj["data"].update(v="edited"))
        made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, edited))
        with anyio.fail_after(5):
            await cluster.healing.wait()  # the heal is held before its write
        source.head = B
        made.push(Push("app", B))
        await anyio.sleep(0.05)
        await anyio.wait_all_tasks_blocked()  # the reconcile waits for the heal
        removed: list[SyncState | None] = []

        async def remove() -> None:
            removed.append(await made.remove("app"))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(remove)
                await anyio.wait_all_tasks_blocked()
                cluster.heal_gate.set()
        assert removed
        assert removed[0] is not None
        assert "app" not in made.states


class ResultKeepingCluster(FakeCluster):
    """Keeps each apply's result, as the controller got it."""

    results: list[ApplyResult]

    async def apply(self, manifests: Sequence[Manifest], options: ApplyOptions) -> ApplyResult:
        result = await super().apply(manifests, options)
        self.results = [*getattr(self, "results", []), result]
        return result


async def test_a_reconcile_keeps_each_object_s_stored_form_not_the_server_s_response() -> None:
    cluster, source = ResultKeepingCluster(), git_source()
    async with running(cluster, source) as made:
        await applied(made, A)

        # The stored form was taken from the response as it came; the response was not kept.
        assert [result.live for result in cluster.results] == [{}]
        stored = cluster.objects[REF]
        fields = our_fields(stored)
        assert fields is not None
        assert made.states["app"].stored == {REF: _compact(as_stored(stored, fields))}
        # And it still judges: an edit of a declared value is healed.
        edited = cluster.edit(REF, lambda obj: obj["data"].update(v="edited"))
        made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, edited))
        with anyio.fail_after(5):
            while data(cluster.objects[REF]) != {"v": "from-a"}:
                await anyio.sleep(0.005)
        assert made.states["app"].heals == 1
