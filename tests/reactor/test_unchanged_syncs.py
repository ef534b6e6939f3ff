"""A push that changed nothing a sync reads is recorded without rendering or writing - unless
the sync has no desired state yet or its last reconcile did not succeed (then: in full)."""

import logging
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import orjson
import pytest

from aioreconcile.engine.applying import ApplyOptions, ApplyResult
from aioreconcile.engine.changes import TreeDiff
from aioreconcile.engine.changeset import Action, ChangeSet, ChangeSetEntry
from aioreconcile.engine.config import GitSourceSpec, SyncSpec
from aioreconcile.engine.metrics import Registry
from aioreconcile.engine.model import Manifest, ObjectRef
from aioreconcile.engine.naming import REVISION_ANNOTATION
from aioreconcile.engine.outcomes import Reason
from aioreconcile.engine.sources import RenderSpec
from aioreconcile.engine.triggers import Push
from aioreconcile.reactor.controlling import (
    Controller,
    SyncState,
    _may_plan_changes_only,
    _plan_changes_only,
)
from tests.reactor.fakes import FakeCluster, FakeGitSource, FakeRenderer, NoWatcher

A, B, C = "a" * 40, "b" * 40, "c" * 40


def config_map(value: str) -> Manifest:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "shop"},
        "data": {"v": value},
    }
    return Manifest(ObjectRef.of(body), body, origin="settings.yaml")


class Source(FakeGitSource):
    """The diff between any two commits touches only ``changed`` (outside the sync's path)."""

    def __init__(self, head: str) -> None:
        super().__init__(head, history=[(A, B), (B, C), (A, C)])
        self.refuse = False
        self.changed: tuple[str, ...] = ("elsewhere/x.yaml",)
        self.not_before: list[float | None] = []

    async def fetch(self, *, not_before: float | None = None) -> str:
        self.not_before.append(not_before)
        return await super().fetch(not_before=not_before)

    async def diff(self, old: str, new: str) -> TreeDiff | None:
        return TreeDiff(self.changed)


class CountingRenderer(FakeRenderer):
    def __init__(self) -> None:
        # C changes the ConfigMap's value (the file under the path that C changes).
        super().__init__({A: [config_map("x")], B: [config_map("x")], C: [config_map("y")]})
        self.rendered: list[str] = []

    async def __call__(self, directory: Path, spec: RenderSpec, **kwargs: object) -> list[Manifest]:
        self.rendered.append(directory.parent.name)
        return await super().__call__(directory, spec, **kwargs)  # type: ignore[arg-type]


class FailingCluster(FakeCluster):
    """Every apply fails while ``failing`` (as an apiserver refusing the object would)."""

    failing = False

    async def apply(self, manifests: Sequence[Manifest], options: ApplyOptions) -> ApplyResult:
        if self.failing:
            return ApplyResult(
                ChangeSet.of(
                    ChangeSetEntry(m.ref, Action.FAILED, error="refused") for m in manifests
                ),
                {},
            )
        return await super().apply(manifests, options)


@asynccontextmanager
async def running(
    cluster: FakeCluster, source: Source, renderer: CountingRenderer
) -> AsyncIterator[Controller]:
    spec = SyncSpec(name="app", source=GitSourceSpec(url="git://example/x", path="deploy"))
    made = Controller(
        [spec],
        cluster=cluster,
        render=renderer,
        sources={"app": source},
        inventories={},
        watcher=NoWatcher(),
        registry=Registry(),
    )
    async with anyio.create_task_group() as tasks:
        await tasks.start(made.run)
        try:
            yield made
        finally:
            tasks.cancel_scope.cancel()


async def attempted(made: Controller, sha: str, *, reason: Reason) -> None:
    """Wait until the reconcile of ``sha`` has ended with ``reason``. The attempted revision is
    recorded when the head is fetched, while ``reason`` still holds the previous outcome, so a
    success is only known once ``sha`` is also the last applied revision."""
    state = made.states["app"]

    def ended() -> bool:
        if state.last_attempted_revision != sha or state.reason != reason.value:
            return False
        return reason != Reason.SUCCEEDED or state.last_applied_revision == sha

    with anyio.fail_after(5):
        while not ended():
            await anyio.sleep(0.005)


async def test_a_head_that_changed_nothing_under_the_path_is_recorded_without_rendering() -> None:
    cluster, source, renderer = FakeCluster(), Source(A), CountingRenderer()
    async with running(cluster, source, renderer) as made:
        await attempted(made, A, reason=Reason.SUCCEEDED)
        writes = len(cluster.writes)
        source.head = B
        made.push(Push("app", B))
        await attempted(made, B, reason=Reason.SUCCEEDED)
        state = made.states["app"]
        assert renderer.rendered == [A]
        assert len(cluster.writes) == writes
        assert state.last_applied_revision == B
        assert state.message.startswith("unchanged: no file under deploy changed")
        assert state.revision == A  # the objects (and their annotation) are A's
        assert source.not_before[-1] is not None  # the push's arrival bounds a shared fetch


async def test_a_fresh_start_renders_even_when_nothing_changed() -> None:
    cluster, source, renderer = FakeCluster(), Source(B), CountingRenderer()
    async with running(cluster, source, renderer) as made:
        await attempted(made, B, reason=Reason.SUCCEEDED)
        assert renderer.rendered == [B]


async def test_a_failed_sync_is_rendered_and_applied_in_full_on_the_next_push() -> None:
    cluster, source, renderer = FailingCluster(), Source(A), CountingRenderer()
    cluster.failing = True
    async with running(cluster, source, renderer) as made:
        await attempted(made, A, reason=Reason.APPLY_FAILED)
        cluster.failing = False
        source.head = B
        made.push(Push("app", B))
        await attempted(made, B, reason=Reason.SUCCEEDED)
        assert renderer.rendered[-1] == B
        assert cluster.writes[-1][1] == B
        assert made.states["app"].revision == B


async def test_a_change_under_the_path_renders_and_applies() -> None:
    cluster, source, renderer = FakeCluster(), Source(A), CountingRenderer()
    async with running(cluster, source, renderer) as made:
        await attempted(made, A, reason=Reason.SUCCEEDED)
        source.changed = ("deploy/settings.yaml",)
        source.head = C
        made.push(Push("app", C))
        await attempted(made, C, reason=Reason.SUCCEEDED)
        assert renderer.rendered == [A, C]
        assert cluster.writes[-1] == (config_map("").ref, C)


async def test_the_reconciled_line_carries_the_stages_of_its_own_reconcile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster, source, renderer = FakeCluster(), Source(A), CountingRenderer()
    caplog.set_level(logging.INFO, logger="aioreconcile.reactor.controlling")
    async with running(cluster, source, renderer) as made:
        await attempted(made, A, reason=Reason.SUCCEEDED)
        source.head = B
        made.push(Push("app", B))
        await attempted(made, B, reason=Reason.SUCCEEDED)
    lines = [r for r in caplog.records if r.getMessage() == "reconciled"]
    applied, unchanged = (r.__dict__["stages_ms"] for r in lines)
    assert {"ref fetch", "git fetch", "render", "apply"} <= applied.keys()
    assert "queue wait" not in applied  # a poll: no webhook arrival to count from
    assert {"queue wait", "ref fetch", "git diff"} <= unchanged.keys()
    assert "render" not in unchanged
    assert lines[1].__dict__["detail"].startswith("unchanged: ")


class LayingOutSource(Source):
    """Laying a commit out takes a while; notes whether the diff of the push was asked
    meanwhile (the real checkout and diff are git processes that can run side by side)."""

    def __init__(self, head: str) -> None:
        super().__init__(head)
        self.diff_asked = anyio.Event()
        self.asked_during_checkout: list[bool] = []

    async def diff(self, old: str, new: str) -> TreeDiff | None:
        self.diff_asked.set()
        return await super().diff(old, new)

    async def checkout(self, sha: str) -> Path:
        if sha == B:
            with anyio.move_on_after(1):
                await self.diff_asked.wait()
            self.asked_during_checkout.append(self.diff_asked.is_set())
        return await super().checkout(sha)


async def test_the_diff_of_a_push_runs_beside_laying_out_its_head() -> None:
    """After the fetch, the diff against the rendered commit does not wait for the checkout:
    both are git processes of their own (``_diff_ahead``); the judgement still comes after."""
    cluster, source, renderer = FakeCluster(), LayingOutSource(A), CountingRenderer()
    async with running(cluster, source, renderer) as made:
        await attempted(made, A, reason=Reason.SUCCEEDED)
        source.head = B
        made.push(Push("app", B))
        await attempted(made, B, reason=Reason.SUCCEEDED)
        assert source.asked_during_checkout == [True]
        assert made.states["app"].message.startswith("unchanged: no file under deploy changed")
        assert renderer.rendered == [A]


async def test_a_change_under_the_path_that_renders_the_same_objects_writes_nothing() -> None:
    """B's diff touches the path, but renders what A rendered: rendered, nothing planned."""
    cluster, source, renderer = FakeCluster(), Source(A), CountingRenderer()
    async with running(cluster, source, renderer) as made:
        await attempted(made, A, reason=Reason.SUCCEEDED)
        writes = len(cluster.writes)
        source.changed = ("deploy/settings.yaml",)
        source.head = B
        made.push(Push("app", B))
        await attempted(made, B, reason=Reason.SUCCEEDED)
        assert renderer.rendered == [A, B]
        assert len(cluster.writes) == writes
        assert made.states["app"].message == f"applied revision {B}"
        # Not written, so its desired state keeps the stamps the object carries: A's.
        desired = orjson.loads(zlib.decompress(made.states["app"].desired[config_map("").ref]))
        assert desired["metadata"]["annotations"][REVISION_ANNOTATION] == A


def _known_state() -> SyncState:
    """A sync whose last reconcile here succeeded in full, with its watches synced."""
    spec = SyncSpec(name="app", source=GitSourceSpec(url="git://example/x", path="deploy"))
    ref = config_map("x").ref
    return SyncState(
        spec,
        revision=A,
        last_applied_revision=A,
        reason=Reason.SUCCEEDED.value,
        digests={ref: b"d"},
        watch_synced=True,
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param({}, True, id="last-reconcile-succeeded"),
        pytest.param({"digests": {}, "revision": None}, False, id="fresh-start-after-restart"),
        pytest.param({"reason": Reason.APPLY_FAILED.value}, False, id="apply-failed"),
        pytest.param({"reason": Reason.PROGRESSING.value}, False, id="health-pending"),
        pytest.param({"spec_changed": True}, False, id="spec-changed-or-requested"),
        pytest.param({"watch_synced": False}, False, id="watches-not-synced"),
    ],
)
def test_only_a_sync_known_as_left_plans_only_its_changes(
    change: dict[str, object], expected: bool
) -> None:
    state = _known_state()
    for name, value in change.items():
        setattr(state, name, value)

    assert _may_plan_changes_only(state) is expected


def test_changed_new_suspect_and_unowned_documents_are_planned() -> None:
    state = _known_state()
    same, changed, new, suspect, unowned = (
        Manifest(ObjectRef("", "ConfigMap", "shop", name, "v1"), {"n": name}, origin="f")
        for name in ("same", "changed", "new", "suspect", "unowned")
    )
    digests = {m.ref: bytes([i]) for i, m in enumerate((same, changed, new, suspect, unowned))}
    state.digests = dict(digests) | {changed.ref: b"old"}
    del state.digests[new.ref]
    state.stored = {m.ref: b"s" for m in (same, changed, new, suspect)}
    state.written = {suspect.ref: "7", same.ref: "8"}
    state.suspects = {suspect.ref: "7", same.ref: "6"}  # ``same`` was healed since (rv 8)

    planned = _plan_changes_only(state, [same, changed, new, suspect, unowned], digests)

    assert planned == [changed, new, suspect, unowned]
