"""Watches against the real apiserver: order, label filtering, kinds coming and going, bookmarks,
an apiserver restart, and the synthetic events of a relist after 410 Gone."""

import contextvars
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest
import yaml

from aioreconcile.adapters.kube.discovery import Discovery, Resource
from aioreconcile.adapters.kube.transport import KEEPALIVE_IDLE_S, MERGE_PATCH, KubeTransport
from aioreconcile.adapters.kube.watching import KindWatch, WatchManager, iter_lines
from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.model import JsonObject, ObjectRef
from aioreconcile.engine.naming import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from aioreconcile.engine.relisting import tombstone
from aioreconcile.testing.faults import FaultProxy, start_proxy
from aioreconcile.testing.pytest_plugin import Kube

pytestmark = pytest.mark.integration

ADDED, MODIFIED, DELETED = EventType.ADDED, EventType.MODIFIED, EventType.DELETED


@dataclass(frozen=True)
class Api:
    transport: KubeTransport
    config_maps: Resource
    secrets: Resource

    async def create(
        self, resource: Resource, namespace: str, name: str, *, labelled: bool = True
    ) -> str:
        metadata: JsonObject = {"name": name}
        if labelled:
            metadata["labels"] = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
        body = {"metadata": metadata, "data": {"k": "MA=="}}
        response = await self.transport.request(
            "POST", resource.collection_path(namespace), body=body
        )
        return str(response.body["metadata"]["resourceVersion"])

    async def modify(self, resource: Resource, namespace: str, name: str, value: str) -> str:
        response = await self.transport.request(
            "PATCH",
            resource.object_path(name, namespace),
            body={"data": {"k": value}},
            content_type=MERGE_PATCH,
        )
        return str(response.body["metadata"]["resourceVersion"])

    async def delete(self, resource: Resource, namespace: str, name: str) -> None:
        await self.transport.request("DELETE", resource.object_path(name, namespace))


@pytest.fixture
async def api(kube: Kube) -> AsyncIterator[Api]:
    async with await KubeTransport.connect(kube.kubeconfig) as transport:
        discovery = Discovery(transport)
        yield Api(
            transport,
            await discovery.resolve(ObjectRef("", "ConfigMap", "", "", "v1")),
            await discovery.resolve(ObjectRef("", "Secret", "", "", "v1")),
        )


class Recorder:
    """The ``on_event`` of a test: keeps the events of one namespace (the cluster is shared)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.events: list[WatchEvent] = []
        self._arrived = anyio.Event()

    def __call__(self, event: WatchEvent) -> None:
        assert event.type in (ADDED, MODIFIED, DELETED)
        if event.ref.namespace == self.namespace:
            self.events.append(event)
            self._arrived.set()
            self._arrived = anyio.Event()

    async def wait_for(self, predicate: Callable[[list[WatchEvent]], bool]) -> None:
        with anyio.fail_after(30):
            while not predicate(self.events):
                await self._arrived.wait()

    async def wait_count(self, count: int) -> None:
        await self.wait_for(lambda events: len(events) >= count)

    def seen(self) -> list[tuple[str, str, str]]:
        return [(e.type.value, e.ref.kind, e.ref.name) for e in self.events]


def managed_by_us(
    api: Api, recorder: Recorder, *, timeout_s: int = 300, emit_initial: bool = False
) -> WatchManager:
    return WatchManager(
        api.transport,
        Discovery(api.transport),
        on_event=recorder,
        timeout_s=timeout_s,
        emit_initial=emit_initial,
    )


async def test_labelled_config_map_is_reported_added_modified_deleted_in_order(
    api: Api, namespace: str
) -> None:
    recorder = Recorder(namespace)
    manager = managed_by_us(api, recorder)
    manager.watch_kinds([api.config_maps])
    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        await manager.wait_synced()

        await api.create(api.config_maps, namespace, "foreign", labelled=False)
        created = await api.create(api.config_maps, namespace, "ours")
        modified = await api.modify(api.config_maps, namespace, "ours", "MQ==")
        await api.modify(api.config_maps, namespace, "foreign", "MQ==")
        await api.delete(api.config_maps, namespace, "foreign")
        await api.delete(api.config_maps, namespace, "ours")
        await api.create(api.config_maps, namespace, "last")
        await recorder.wait_count(4)
        tg.cancel_scope.cancel()

    assert recorder.seen() == [
        ("ADDED", "ConfigMap", "ours"),
        ("MODIFIED", "ConfigMap", "ours"),
        ("DELETED", "ConfigMap", "ours"),
        ("ADDED", "ConfigMap", "last"),
    ]
    assert [e.resource_version for e in recorder.events[:2]] == [created, modified]
    assert not any(e.synthetic for e in recorder.events)
    assert recorder.events[1].object["data"] == {"k": "MQ=="}


async def test_initial_list_is_silent_unless_asked_for(api: Api, namespace: str) -> None:
    await api.create(api.config_maps, namespace, "existing")
    silent, loud = Recorder(namespace), Recorder(namespace)
    managers = [managed_by_us(api, silent), managed_by_us(api, loud, emit_initial=True)]
    async with anyio.create_task_group() as tg:
        for manager in managers:
            manager.watch_kinds([api.config_maps])
            await tg.start(manager.run)
            await manager.wait_synced(api.config_maps)
        await api.create(api.config_maps, namespace, "later")
        await silent.wait_count(1)
        await loud.wait_count(2)
        tg.cancel_scope.cancel()

    assert silent.seen() == [("ADDED", "ConfigMap", "later")]
    assert loud.seen() == [("ADDED", "ConfigMap", "existing"), ("ADDED", "ConfigMap", "later")]
    assert [e.synthetic for e in loud.events] == [True, False]
    assert loud.events[0].object["kind"] == "ConfigMap"  # filled in: list items lack it


async def test_watch_kinds_starts_and_stops_watches_while_running(api: Api, namespace: str) -> None:
    recorder = Recorder(namespace)
    manager = managed_by_us(api, recorder)
    manager.watch_kinds([api.config_maps])
    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        await manager.wait_synced()
        await api.create(api.secrets, namespace, "before")

        manager.watch_kinds([api.config_maps, api.secrets])
        manager.watch_kinds([api.secrets, api.config_maps])  # idempotent
        await manager.wait_synced()
        assert manager.kinds == {api.config_maps, api.secrets}
        await api.create(api.secrets, namespace, "during")
        await recorder.wait_count(1)

        manager.watch_kinds([api.config_maps])
        assert manager.kinds == {api.config_maps}
        await api.create(api.secrets, namespace, "after")
        await api.create(api.config_maps, namespace, "marker")
        await recorder.wait_count(2)
        await anyio.sleep(0.5)  # room for a stray Secret event, were the watch still running
        tg.cancel_scope.cancel()

    assert recorder.seen() == [("ADDED", "Secret", "during"), ("ADDED", "ConfigMap", "marker")]


WORK: contextvars.ContextVar[str | None] = contextvars.ContextVar("work", default=None)


async def test_a_watch_runs_in_its_managers_context_not_in_the_callers(
    api: Api, namespace: str
) -> None:
    """A watch outlives the work that asked for it (a commit's reconcile, whose trace context
    is a contextvar): its events must not be handled in that work's context (issue 15: "drift
    detected" logged with the first poll's trace id)."""
    seen: list[str | None] = []
    recorder = Recorder(namespace)

    def on_event(event: WatchEvent) -> None:
        seen.append(WORK.get())
        recorder(event)

    manager = WatchManager(api.transport, Discovery(api.transport), on_event=on_event)
    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        token = WORK.set("the reconcile of commit 1")
        try:
            manager.watch_kinds([api.config_maps])  # asked for inside that work
        finally:
            WORK.reset(token)
        await manager.wait_synced()
        await api.create(api.config_maps, namespace, "later")
        await recorder.wait_count(1)
        tg.cancel_scope.cancel()

    assert seen
    assert set(seen) == {None}


async def churn(api: Api, namespace: str, prefix: str, *, count: int) -> None:
    for i in range(count):
        await api.create(api.config_maps, namespace, f"churn-{prefix}{i}", labelled=False)
        await anyio.sleep(0.5)


async def test_bookmarks_and_reconnects_deliver_every_event_once(api: Api, namespace: str) -> None:
    recorder = Recorder(namespace)
    # Watches of 3 s: several reconnects, each resuming from the last event or bookmark.
    manager = managed_by_us(api, recorder, timeout_s=3)
    manager.watch_kinds([api.config_maps])
    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        await manager.wait_synced()
        created = await api.create(api.config_maps, namespace, "ours")
        # Unlabelled churn moves the resourceVersion on; only bookmarks tell the watch about it.
        await churn(api, namespace, "a", count=8)
        modified = await api.modify(api.config_maps, namespace, "ours", "MQ==")
        await churn(api, namespace, "b", count=8)
        await api.delete(api.config_maps, namespace, "ours")
        await recorder.wait_count(3)
        await anyio.sleep(0.5)
        tg.cancel_scope.cancel()

    assert recorder.seen() == [
        ("ADDED", "ConfigMap", "ours"),
        ("MODIFIED", "ConfigMap", "ours"),
        ("DELETED", "ConfigMap", "ours"),
    ]
    assert [e.resource_version for e in recorder.events[:2]] == [created, modified]
    assert manager.stats.bookmarks >= 1
    assert manager.stats.reconnects >= 2
    assert manager.stats.relists == 0
    assert not any(e.synthetic for e in recorder.events)


async def test_watch_survives_an_apiserver_restart(kube: Kube, api: Api, namespace: str) -> None:
    recorder = Recorder(namespace)
    manager = managed_by_us(api, recorder)
    manager.watch_kinds([api.config_maps])
    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        await manager.wait_synced()
        await api.create(api.config_maps, namespace, "ours")
        await recorder.wait_count(1)

        try:
            await kube.control_plane.stop_apiserver()
            await anyio.sleep(0.5)  # the watch notices and starts retrying against nothing
        finally:
            await kube.control_plane.start_apiserver()
        modified = await api.modify(api.config_maps, namespace, "ours", "MQ==")
        await recorder.wait_count(2)
        await anyio.sleep(0.5)
        tg.cancel_scope.cancel()

    # Whether the change arrives as a live event or from the relist after 410 depends on timing;
    # either way it arrives exactly once, with the object as modified.
    assert recorder.seen() == [("ADDED", "ConfigMap", "ours"), ("MODIFIED", "ConfigMap", "ours")]
    assert recorder.events[1].resource_version == modified
    assert recorder.events[1].object["data"] == {"k": "MQ=="}
    assert manager.stats.failures >= 1


async def test_relist_after_410_makes_up_exactly_what_changed_while_away(
    kube: Kube, api: Api, namespace: str
) -> None:
    for name in ("kept", "changed", "removed"):
        await api.create(api.config_maps, namespace, name)
    recorder = Recorder(namespace)
    watch = KindWatch(api.transport, api.config_maps, on_event=recorder)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        await watch.synced.wait()
        tg.cancel_scope.cancel()
    away_from = watch.resource_version

    changed = await api.modify(api.config_maps, namespace, "changed", "MQ==")
    await api.delete(api.config_maps, namespace, "removed")
    await api.create(api.config_maps, namespace, "new")
    await api.create(api.config_maps, namespace, "foreign", labelled=False)
    # A fresh apiserver's watch cache starts now: resuming from before gets 410 Gone.
    await kube.control_plane.restart_apiserver()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        await recorder.wait_count(3)
        await anyio.sleep(0.5)
        tg.cancel_scope.cancel()

    assert watch.stats.relists == 1
    assert watch.resource_version != away_from
    assert sorted(recorder.seen()) == [
        ("ADDED", "ConfigMap", "new"),
        ("DELETED", "ConfigMap", "removed"),
        ("MODIFIED", "ConfigMap", "changed"),
    ]
    assert all(e.synthetic for e in recorder.events)
    by_name = {e.ref.name: e for e in recorder.events}
    assert by_name["changed"].resource_version == changed
    assert by_name["removed"].object == tombstone(by_name["removed"].ref)
    cached = {ref.name for ref in watch.cache if ref.namespace == namespace}
    assert cached == {"kept", "changed", "new"}


async def test_relist_diffs_a_paged_listing_against_the_cache(api: Api, namespace: str) -> None:
    for i in range(5):
        await api.create(api.config_maps, namespace, f"cm-{i}")
    recorder = Recorder(namespace)
    watch = KindWatch(api.transport, api.config_maps, on_event=recorder, page_size=2)
    await watch.sync()
    assert recorder.events == []

    await api.modify(api.config_maps, namespace, "cm-1", "MQ==")
    await api.delete(api.config_maps, namespace, "cm-3")
    await api.create(api.config_maps, namespace, "cm-5")
    await watch.relist()
    await watch.relist()  # nothing changed since: nothing to say

    assert recorder.seen() == [
        ("ADDED", "ConfigMap", "cm-5"),
        ("MODIFIED", "ConfigMap", "cm-1"),
        ("DELETED", "ConfigMap", "cm-3"),
    ]
    assert watch.stats.lists == 3
    assert {ref.name for ref in watch.cache if ref.namespace == namespace} == {
        "cm-0",
        "cm-1",
        "cm-2",
        "cm-4",
        "cm-5",
    }


class Chunks:
    """A watch body delivered in arbitrary pieces, as TCP does."""

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = list(chunks)

    async def readany(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


async def test_lines_are_reassembled_across_chunks_however_long() -> None:
    big = b'{"type":"ADDED","object":{"data":"' + b"x" * 300_000 + b'"}}'
    body = b'{"a":1}\n\n' + big + b'\n{"b":2}'
    chunks = [body[i : i + 7000] for i in range(0, len(body), 7000)]

    lines = [line async for line in iter_lines(Chunks(*chunks))]

    assert lines == [b'{"a":1}', big, b'{"b":2}']


# --- a connection that goes silent ---------------------------------------------------------------


def kubeconfig_via(kubeconfig: Path, port: int, directory: Path) -> Path:
    """A copy of ``kubeconfig`` whose server is ``127.0.0.1:port`` (TLS still verifies: the
    apiserver's certificate names 127.0.0.1, whatever the port)."""
    document = yaml.safe_load(kubeconfig.read_text())
    for cluster in document["clusters"]:
        server = urlsplit(cluster["cluster"]["server"])
        cluster["cluster"]["server"] = f"{server.scheme}://127.0.0.1:{port}"
    path = directory / "kubeconfig-via-proxy"
    path.write_text(yaml.safe_dump(document))
    return path


@asynccontextmanager
async def through_proxy(
    kube: Kube, directory: Path
) -> AsyncIterator[tuple[FaultProxy, KubeTransport]]:
    server = urlsplit(kube.control_plane.server)
    assert server.hostname is not None
    assert server.port is not None
    async with start_proxy(server.hostname, server.port) as proxy:
        kubeconfig = kubeconfig_via(kube.kubeconfig, proxy.port, directory)
        async with await KubeTransport.connect(kubeconfig) as transport:
            yield proxy, transport


async def test_a_watch_whose_connection_goes_silent_is_restarted_within_its_read_timeout(
    kube: Kube, api: Api, namespace: str, tmp_path: Path
) -> None:
    read_timeout_s = 2.0
    await api.create(api.config_maps, namespace, "ours")
    recorder = Recorder(namespace)
    async with through_proxy(kube, tmp_path) as (proxy, transport):
        # Composed as the controller composes it, with a test-sized bound.
        manager = WatchManager(
            transport, Discovery(transport), on_event=recorder, read_timeout_s=read_timeout_s
        )
        manager.watch_kinds([api.config_maps])
        async with anyio.create_task_group() as tg:
            await tg.start(manager.run)
            await manager.wait_synced()
            await api.create(api.config_maps, namespace, "marker")
            await recorder.wait_count(1)  # the watch stream flows through the proxy

            assert proxy.blackhole() >= 1  # half-open: both ends stay connected, nothing passes
            silenced_at = time.monotonic()
            # Written directly, not through the proxy: only a working watch can report it.
            modified = await api.modify(api.config_maps, namespace, "ours", "MQ==")
            with anyio.fail_after(read_timeout_s + 10):
                await recorder.wait_count(2)
            seen_after = time.monotonic() - silenced_at
            tg.cancel_scope.cancel()

    assert recorder.seen() == [("ADDED", "ConfigMap", "marker"), ("MODIFIED", "ConfigMap", "ours")]
    assert recorder.events[1].resource_version == modified
    assert manager.stats.silent_restarts >= 1
    # Detected once the read timeout passed since the last byte (the marker, received just
    # before the silence), resumed at once from the last resourceVersion.
    assert read_timeout_s - 0.5 <= seen_after < read_timeout_s + 5, seen_after
    assert manager.stats.relists == 0


def keepalive_timers(port: int) -> list[tuple[int, int]]:
    """``(timer, seconds until it fires)`` of every established loopback socket connected to
    ``port``, from /proc/net/tcp: timer 2 is the keepalive timer, 0 none."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state, timer = fields[2], fields[3], fields[5]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            kind, when = timer.split(":")
            found.append((int(kind, 16), int(when, 16) // 100))  # clock ticks at USER_HZ=100
    return found


async def test_apiserver_connections_probe_a_dead_peer_with_tcp_keepalive(
    kube: Kube, api: Api, tmp_path: Path
) -> None:
    async with through_proxy(kube, tmp_path) as (proxy, transport):
        await transport.request("GET", api.config_maps.collection_path("default"))

        timers = keepalive_timers(proxy.port)

    assert timers, "no connection to the proxy found"
    assert all(kind == 2 and when <= KEEPALIVE_IDLE_S for kind, when in timers), timers
