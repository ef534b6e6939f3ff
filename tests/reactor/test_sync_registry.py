"""Syncs added, edited, suspended and removed while the controller runs (CRD mode), and
``dependsOn`` order, with fakes through the constructor."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio

from aioreconcile.engine.changes import TreeDiff
from aioreconcile.engine.config import GitSourceSpec, SyncSpec
from aioreconcile.engine.manifests import KnownDocuments
from aioreconcile.engine.metrics import Registry
from aioreconcile.engine.model import Manifest, ObjectRef
from aioreconcile.engine.outcomes import Reason
from aioreconcile.engine.sources import RenderSpec
from aioreconcile.engine.triggers import Push
from aioreconcile.reactor.controlling import Controller, SyncState
from tests.reactor.fakes import FakeCluster, FakeGitSource, NoWatcher

A = "a" * 40


def config_map(name: str) -> Manifest:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "shop"},
        "data": {"v": "1"},
    }
    return Manifest(ObjectRef.of(body), body, origin=f"{name}.yaml")


class ByDirectory:
    """Renders one ConfigMap named after the rendered directory (the spec's ``path``)."""

    def __init__(self) -> None:
        self.rendered: list[str] = []

    async def __call__(
        self,
        directory: Path,
        spec: RenderSpec,
        *,
        root: Path | None,
        is_namespaced: Callable[[ObjectRef], bool | None],
        known: KnownDocuments | None = None,
    ) -> list[Manifest]:
        await anyio.lowlevel.checkpoint()
        self.rendered.append(directory.name)
        return [config_map(directory.name)]


def source() -> FakeGitSource:
    made = FakeGitSource(A)
    made.refuse = False
    return made


def spec(name: str, path: str = "one", **fields: object) -> SyncSpec:
    git = GitSourceSpec(url="git://example/x", path=path, interval_s=3600)
    return SyncSpec(name=name, source=git, **fields)  # type: ignore[arg-type]


@asynccontextmanager
async def running(
    cluster: FakeCluster, renderer: ByDirectory, changes: list[str] | None = None
) -> AsyncIterator[Controller]:
    made = Controller(
        [],
        cluster=cluster,
        render=renderer,
        sources={},
        inventories={},
        watcher=NoWatcher(),
        registry=Registry(),
        on_change=(lambda state: changes.append(state.spec.name)) if changes is not None else None,
    )
    async with anyio.create_task_group() as tasks:
        await tasks.start(made.run)
        try:
            yield made
        finally:
            tasks.cancel_scope.cancel()


async def until(check: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not check():
            await anyio.sleep(0.005)


def names(cluster: FakeCluster) -> set[str]:
    return {ref.name for ref in cluster.objects}


async def test_a_sync_added_while_running_is_reconciled_at_once() -> None:
    cluster, changes = FakeCluster(), list[str]()
    async with running(cluster, ByDirectory(), changes) as made:
        made.upsert(spec("ns.app"), source=source(), inventory=None)
        await until(lambda: made.states["ns.app"].reason == Reason.SUCCEEDED)
    assert names(cluster) == {"one"}
    assert "ns.app" in changes  # the status writer was told


async def test_an_edited_path_reapplies_the_same_commit_and_prunes_the_old_objects() -> None:
    cluster, renderer = FakeCluster(), ByDirectory()
    async with running(cluster, renderer) as made:
        made.upsert(spec("ns.app"), source=source(), inventory=None)
        await until(lambda: made.states["ns.app"].reason == Reason.SUCCEEDED)
        made.upsert(spec("ns.app", path="two"), source=source(), inventory=None)
        await until(lambda: "two" in renderer.rendered)
        await until(lambda: made.states["ns.app"].reason == Reason.SUCCEEDED)
        state = made.states["ns.app"]
    assert state.last_applied_revision == A
    assert {ref.name for ref in state.desired} == {"two"}
    assert "two" in names(cluster)


async def test_the_same_spec_again_changes_nothing() -> None:
    cluster, renderer = FakeCluster(), ByDirectory()
    async with running(cluster, renderer) as made:
        made.upsert(spec("ns.app"), source=source(), inventory=None)
        await until(lambda: made.states["ns.app"].reason == Reason.SUCCEEDED)
        made.upsert(spec("ns.app"), source=source(), inventory=None)
        await anyio.sleep(0.05)
    assert renderer.rendered == ["one"]


async def test_a_suspended_sync_ignores_pushes_and_a_resumed_one_reconciles() -> None:
    cluster, renderer = FakeCluster(), ByDirectory()
    async with running(cluster, renderer) as made:
        made.upsert(spec("ns.app", suspend=True), source=source(), inventory=None)
        made.push(Push("ns.app", A))
        await anyio.sleep(0.05)
        assert renderer.rendered == []
        made.upsert(spec("ns.app"), source=source(), inventory=None)
        await until(lambda: made.states["ns.app"].reason == Reason.SUCCEEDED)
    assert renderer.rendered == ["one"]


async def test_remove_waits_for_the_reconcile_under_way_and_returns_what_it_applied() -> None:
    cluster = FakeCluster()
    cluster.apply_gate = anyio.Event()
    async with running(cluster, ByDirectory()) as made:
        made.upsert(spec("ns.app"), source=source(), inventory=None)
        with anyio.fail_after(5):
            await cluster.applied.wait()  # written, held before the reconcile records it
        removed: list[SyncState | None] = []

        async def remove() -> None:
            removed.append(await made.remove("ns.app"))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(remove)
            await anyio.sleep(0.05)
            assert removed == []  # still applying
            cluster.apply_gate.set()
        assert "ns.app" not in made.states
        made.poll("ns.app")  # a late trigger of a removed sync does nothing
        await anyio.sleep(0.02)
    (state,) = removed
    assert state is not None
    assert {ref.name for ref in state.desired} == {"one"}


async def test_a_sync_added_again_while_its_removal_waits_keeps_its_source() -> None:
    """A shard lost and gained again (or a Sync deleted and recreated) while the old removal
    still waits for its reconcile: the removal must not take the new registration's source,
    or every reconcile of the sync fails with a KeyError from then on."""
    cluster = FakeCluster()
    cluster.apply_gate = anyio.Event()
    async with running(cluster, ByDirectory()) as made:
        made.upsert(spec("ns.app"), source=source(), inventory=None)
        with anyio.fail_after(5):
            await cluster.applied.wait()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(made.remove, "ns.app")
            await anyio.sleep(0.05)  # the removal waits for the apply under way
            made.upsert(spec("ns.app", path="two"), source=source(), inventory=None)
            cluster.apply_gate.set()
        await until(lambda: made.states["ns.app"].reason == Reason.SUCCEEDED)
        assert made.states["ns.app"].spec.source.path == "two"


async def test_a_sync_waits_for_the_syncs_it_depends_on() -> None:
    cluster, renderer = FakeCluster(), ByDirectory()
    async with running(cluster, renderer) as made:
        base = source()
        base.refuse = True  # the dependency fails verification: never Ready
        made.upsert(
            spec("ns.app", path="app", depends_on=("ns.base",)), source=source(), inventory=None
        )
        made.upsert(spec("ns.base", path="base"), source=base, inventory=None)
        await until(lambda: made.states["ns.app"].reason == Reason.DEPENDENCY_NOT_READY)
        assert "ns.base" in made.states["ns.app"].message
        assert renderer.rendered == []
        base.refuse = False
        made.upsert(replace(spec("ns.base", path="base"), prune=False), source=base, inventory=None)
        await until(lambda: made.states["ns.app"].reason == Reason.SUCCEEDED)
    assert renderer.rendered == ["base", "app"]


async def test_a_label_change_alone_reapplies_nothing() -> None:
    cluster, renderer = FakeCluster(), ByDirectory()
    async with running(cluster, renderer) as made:
        made.upsert(spec("ns.app"), source=source(), inventory=None)
        await until(lambda: made.states["ns.app"].reason == Reason.SUCCEEDED)
        made.upsert(spec("ns.app", labels={"tier": "web"}), source=source(), inventory=None)
        await anyio.sleep(0.05)
        state = made.states["ns.app"]
    assert renderer.rendered == ["one"]
    assert state.reason == Reason.SUCCEEDED
    assert state.spec.labels == {"tier": "web"}


class Comparable(FakeGitSource):
    """Tells that nothing changed between two commits (as ``git diff`` of one commit would)."""

    async def diff(self, old: str, new: str) -> TreeDiff | None:
        return TreeDiff(changed=())


async def test_a_requested_reconcile_renders_and_applies_the_unmoved_head_again() -> None:
    cluster, renderer = FakeCluster(), ByDirectory()
    git = Comparable(A)
    git.refuse = False
    async with running(cluster, renderer) as made:
        made.upsert(spec("ns.app"), source=git, inventory=None)
        await until(lambda: made.states["ns.app"].reason == Reason.SUCCEEDED)
        made.request("ns.app")
        await until(lambda: made.states["ns.app"].reconciles == 2)
    assert renderer.rendered == ["one", "one"]  # not "unchanged": a request re-applies
