"""The controller's health check for ``wait: true`` syncs, with fakes through its constructor:
a wait holds no lane, a newer commit supersedes it, a failure is not retried with backoff; and
a sync with its own cluster (a service account's) uses it for everything."""

import copy
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from aioreconcile.engine.applying import ApplyOptions, ApplyResult
from aioreconcile.engine.changes import TreeDiff
from aioreconcile.engine.changeset import Action, ChangeSet, ChangeSetEntry
from aioreconcile.engine.config import GitSourceSpec, SyncSpec
from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.manifests import KnownDocuments
from aioreconcile.engine.metrics import Registry
from aioreconcile.engine.model import JsonObject, Manifest, ObjectRef
from aioreconcile.engine.planning import stamp
from aioreconcile.engine.sources import RenderSpec
from aioreconcile.reactor.controlling import Controller

SHA1, SHA2 = "1" * 40, "2" * 40


def widget(size: int) -> JsonObject:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": "n"},
        "spec": {"size": size},
    }


REF = ObjectRef.of(widget(1))


class Widgets:
    """A cluster holding one Widget whose controller calls it Ready when ``ready(size)``."""

    def __init__(self) -> None:
        self.ready: Callable[[int], bool] = lambda size: False
        self.stalled = False
        self.body: JsonObject | None = None
        self.gets = 0
        self.heals = 0

    def _live(self) -> JsonObject | None:
        if self.body is None:
            return None
        live = copy.deepcopy(self.body)
        ok = self.ready(live["spec"]["size"])
        condition = {"type": "Ready", "status": str(ok), "reason": "Test", "message": "by fake"}
        live["status"] = {"conditions": [condition]}
        if self.stalled:
            stalled = {"type": "Stalled", "status": "True", "reason": "BadSpec", "message": "x"}
            live["status"]["conditions"].append(stalled)
        return live

    def is_namespaced(self, ref: ObjectRef) -> bool | None:
        return True

    async def refresh_discovery(self) -> None:
        return None

    async def apply(self, manifests: Sequence[Manifest], options: ApplyOptions) -> ApplyResult:
        (manifest,) = manifests
        self.body = manifest.body
        live = self._live()
        assert live is not None
        entry = ChangeSetEntry(REF, Action.CONFIGURED)
        kept = options.kept(entry, live)
        return ApplyResult(ChangeSet.of([entry]), {REF: kept} if kept is not None else {})

    async def delete(self, refs: Sequence[ObjectRef], options: ApplyOptions) -> ChangeSet:
        return ChangeSet()

    async def get(self, ref: ObjectRef) -> JsonObject | None:
        self.gets += 1
        return self._live()

    async def preview(
        self, manifest: Manifest, options: ApplyOptions
    ) -> tuple[JsonObject | None, JsonObject]:
        raise AssertionError("not used")

    async def list_owned(self, kind: ObjectRef, *, sync: str) -> dict[ObjectRef, JsonObject]:
        live = self._live()
        return {} if live is None else {REF: live}

    async def deletable_kinds(self) -> list[ObjectRef]:
        return [REF]

    async def apply_object(
        self,
        manifest: Manifest,
        options: ApplyOptions,
        *,
        live: JsonObject | None,
        known_changed: bool = False,
    ) -> tuple[ChangeSetEntry, JsonObject | None]:
        """A heal: the object is written back."""
        self.body = manifest.body
        self.heals += 1
        entry = ChangeSetEntry(REF, Action.CREATED, resource_version_after=f"h{self.heals}")
        return entry, self._live()


class Refusing:
    """The controller's own cluster, for a sync that has its own: never to be used for it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the controller's own identity was used for {name}")


class Source:
    """The ref's head is ``head``; commit N's tree is the directory named after its SHA."""

    def __init__(self, root: Path) -> None:
        self.head = SHA1
        self.root = root

    async def resolve(self) -> str:
        return self.head

    async def fetch(self, *, not_before: float | None = None) -> str:
        return self.head

    async def diff(self, old: str, new: str) -> TreeDiff | None:
        return None  # cannot compare: every commit renders

    async def is_ancestor(self, ancestor: str, commit: str) -> bool | None:
        return None

    async def verify(self, sha: str) -> None:
        return None

    async def checkout(self, sha: str) -> Path:
        return self.root / sha

    async def commit_info(self, sha: str) -> tuple[str, str]:
        return "Ada", "change"


async def render(
    directory: Path,
    spec: RenderSpec,
    *,
    root: Path | None,
    is_namespaced: Callable[[ObjectRef], bool | None],
    known: KnownDocuments | None = None,
) -> list[Manifest]:
    size = 1 if directory.name == SHA1 else 2
    return [Manifest(REF, widget(size), origin="fake")]


class NoWatcher:
    def watch(self, kinds: Iterable[ObjectRef]) -> None:
        return None

    async def wait_synced(self) -> None:
        return None


@pytest.fixture
async def widgets() -> Widgets:
    return Widgets()


@asynccontextmanager
async def running(
    widgets: Widgets, tmp_path: Path, *, timeout_s: float, own_cluster: bool = False
) -> AsyncIterator[tuple[Controller, Source]]:
    """The controller with one ``wait: true`` sync ``app`` on ``widgets``; ``own_cluster``: as
    the sync's own cluster (a service account's), the controller's being one that refuses."""
    spec = SyncSpec(
        name="app", source=GitSourceSpec(url="git://x/y"), wait=True, wait_timeout_s=timeout_s
    )
    source = Source(tmp_path)
    controller = Controller(
        [spec],
        cluster=cast(Any, Refusing()) if own_cluster else widgets,
        clusters={"app": widgets} if own_cluster else None,
        render=render,
        sources={"app": source},
        inventories={},
        watcher=NoWatcher(),
        registry=Registry(),
    )
    async with anyio.create_task_group() as tasks:
        await tasks.start(controller.queue.run)
        yield controller, source
        tasks.cancel_scope.cancel()


async def until(check: Callable[[], bool], *, seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        while not check():
            await anyio.sleep(0.01)


async def test_a_newer_commit_is_applied_while_an_older_one_waits_and_supersedes_it(
    widgets: Widgets, tmp_path: Path
) -> None:
    widgets.ready = lambda size: size == 2  # commit 1's Widget never becomes Ready
    async with running(widgets, tmp_path, timeout_s=30.0) as (controller, source):
        state = controller.states["app"]
        controller.poll("app")
        await until(lambda: state.reason == "Progressing")
        assert state.last_applied_revision is None

        source.head = SHA2
        controller.poll("app")

        # Not behind commit 1's 30 s wait: the sync's lane was free.
        await until(lambda: state.last_applied_revision == SHA2, seconds=2.0)
        assert state.reason == "ReconciliationSucceeded"
        gets = widgets.gets
        await anyio.sleep(1.2)  # commit 1's health rounds would have run by now
        assert state.reason == "ReconciliationSucceeded"
        assert state.health is None
        assert widgets.gets == gets


async def test_a_failed_health_check_waits_for_the_next_poll_and_then_succeeds(
    widgets: Widgets, tmp_path: Path
) -> None:
    async with running(widgets, tmp_path, timeout_s=1.5) as (controller, _):
        state = controller.states["app"]
        controller.poll("app")
        await until(lambda: state.reason == "HealthCheckFailed")
        assert state.last_error is not None
        assert "Widget.example.com/n/w: InProgress: not ready: Test (by fake)" in state.last_error
        assert state.last_applied_revision is None
        assert controller.queue.depth == 0  # no backoff retry scheduled

        # A poll while the same commit waits does not restart the wait.
        controller.poll("app")
        await until(lambda: state.reason == "Progressing")
        started = state.health.deadline if state.health else None
        controller.poll("app")
        await anyio.sleep(0.2)
        assert state.health is not None
        assert state.health.deadline == started

        widgets.ready = lambda size: True
        await until(lambda: state.reason == "ReconciliationSucceeded")
        assert state.last_applied_revision == SHA1


async def test_a_failed_object_ends_the_wait_at_once(widgets: Widgets, tmp_path: Path) -> None:
    """Stalled (kstatus Failed) will not heal by waiting: HealthCheckFailed now, not after the
    timeout (Flux's fail-fast since 2.1)."""
    async with running(widgets, tmp_path, timeout_s=30.0) as (controller, _):
        state = controller.states["app"]
        controller.poll("app")
        await until(lambda: state.reason == "Progressing")

        widgets.stalled = True

        await until(lambda: state.reason == "HealthCheckFailed", seconds=2.0)
        assert state.last_error is not None
        assert "1 object failed" in state.last_error
        assert "Widget.example.com/n/w: Failed: stalled: BadSpec (x)" in state.last_error


async def test_a_sync_with_its_own_cluster_never_uses_the_controllers(
    widgets: Widgets, tmp_path: Path
) -> None:
    """Reconcile, health rounds and drift heals of a sync with a service account all go
    through its own (impersonating) cluster."""
    ready_after = 2
    widgets.ready = lambda size: widgets.gets >= ready_after
    async with running(widgets, tmp_path, timeout_s=30.0, own_cluster=True) as (controller, _):
        state = controller.states["app"]
        controller.poll("app")
        await until(lambda: state.reason == "ReconciliationSucceeded")
        assert widgets.gets >= ready_after  # the health rounds read through it

        gone = stamp(widget(1), sync="app", revision=SHA1, traceparent=None)
        gone["metadata"]["resourceVersion"] = "99"
        widgets.body = None  # deleted by someone
        controller.on_watch_event(WatchEvent(EventType.DELETED, REF, gone))

        await until(lambda: widgets.heals == 1)
        assert state.heals == 1
