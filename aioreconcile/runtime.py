"""The composition root: the one place that builds clients and wires adapters into the reactor.

The CLI hands it plain settings; it returns plain results (SyncOutcome, diffs) for the CLI to
print. Nothing below this module knows which concrete adapters are in use.
"""

import contextlib
import ctypes
import gc
import hashlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import anyio.abc

from aioreconcile.adapters.git import GitCache, GitSource
from aioreconcile.adapters.kube.access import pod_namespace
from aioreconcile.adapters.kube.cluster import KubeCluster, ManagedKindsWatcher
from aioreconcile.adapters.kube.inventories import ConfigMapInventoryStore
from aioreconcile.adapters.kube.leasing import LeaseElector
from aioreconcile.adapters.kube.resources import (
    RECEIVERS,
    SECRETS,
    SYNCS,
    KubeSyncResources,
    patch_sync,
    read_data,
    read_sync,
    run_watch,
    watch_resources,
)
from aioreconcile.adapters.kube.sharding import ShardElector
from aioreconcile.adapters.kube.transport import KubeTransport
from aioreconcile.adapters.kube.watching import (
    MIN_WATCH_READ_TIMEOUT_S,
    WATCH_READ_TIMEOUT_S,
    WatchManager,
)
from aioreconcile.adapters.render import render
from aioreconcile.adapters.serving.endpoints import build_ops_app
from aioreconcile.adapters.serving.listening import ListenerLimits, serve
from aioreconcile.adapters.telemetry.correlating import install_log_correlation
from aioreconcile.adapters.telemetry.setup import TracingHandle, TracingSettings, start_tracing
from aioreconcile.adapters.webhook.receiving import LiveReceivers, build_app, load_secret
from aioreconcile.engine.applying import ApplyOptions
from aioreconcile.engine.changeset import ChangeSetEntry
from aioreconcile.engine.config import ControllerConfig, DataRef, SyncSpec
from aioreconcile.engine.configuration import parse_config
from aioreconcile.engine.diffing import unified_diff
from aioreconcile.engine.errors import AioreconcileError, LeadershipLost
from aioreconcile.engine.events import WatchEvent
from aioreconcile.engine.inventory import Inventory, allow_prune, inventory_key, stale
from aioreconcile.engine.leadership import LeaseTimings
from aioreconcile.engine.metrics import Registry
from aioreconcile.engine.model import Manifest, ObjectRef
from aioreconcile.engine.outcomes import SyncOutcome
from aioreconcile.engine.resources import (
    REQUEST_TRACE_ANNOTATION,
    REQUESTED_AT_ANNOTATION,
    REVISION_HINT_ANNOTATION,
)
from aioreconcile.engine.sources import RenderSpec
from aioreconcile.reactor.controlling import Controller
from aioreconcile.reactor.leading import lead, warm_watches
from aioreconcile.reactor.queueing import Backoff
from aioreconcile.reactor.requesting import ReconcileRequests, SyncCatalog
from aioreconcile.reactor.resources import ReceiverResources, SyncResources
from aioreconcile.reactor.syncing import SyncRequest, sync_once
from aioreconcile.reactor.tracing import CommitInfo, NoTracing

logger = logging.getLogger(__name__)

# With --shards: the holder of this shard writes the Receivers' status (every replica serves
# them), as the leader does with --leader-elect.
RECEIVER_SHARD = 0

# How often a standby re-reads the inventories to follow the kinds the leader manages.
_STANDBY_REFRESH_S = 60.0


@dataclass(frozen=True)
class ClusterSettings:
    kubeconfig: Path | None = None
    context: str | None = None


@dataclass(frozen=True)
class DirectorySettings:
    """``aioreconcile apply|diff PATH`` in plain data."""

    path: Path
    sync: str
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    render: RenderSpec = field(default_factory=RenderSpec)
    inventory: str | None = None
    inventory_namespace: str = "default"
    prune: bool = False
    allow_empty: bool = False
    wait: bool = False
    wait_timeout_s: float = 300.0
    dry_run: bool = False
    force_conflicts: bool = True
    concurrency: int = 16
    tracing: TracingSettings = field(default_factory=TracingSettings.from_environ)


def directory_revision(path: Path) -> str:
    """A revision for a directory applied by hand: a digest of its files (names and bytes),
    so that the same content always carries the same revision annotation."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.parts):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return f"dir-sha256:{digest.hexdigest()[:16]}"


@asynccontextmanager
async def open_cluster(
    settings: ClusterSettings, *, read_timeout_s: float | None = None
) -> AsyncIterator[KubeCluster]:
    async with await KubeCluster.connect(
        settings.kubeconfig, context=settings.context, read_timeout_s=read_timeout_s
    ) as cluster:
        yield cluster


def _options(settings: DirectorySettings, revision: str) -> ApplyOptions:
    """What ``apply`` and ``diff`` both write: the same options, so a diff with apply's
    arguments compares against exactly what apply would store (inventory stamp included)."""
    return ApplyOptions(
        sync=settings.sync,
        revision=revision,
        force_conflicts=settings.force_conflicts,
        dry_run=settings.dry_run,
        concurrency=settings.concurrency,
        inventory=(
            inventory_key(settings.inventory_namespace, settings.inventory)
            if settings.inventory
            else None
        ),
    )


async def apply_directory(
    settings: DirectorySettings, on_entry: Callable[[ChangeSetEntry], None] | None = None
) -> SyncOutcome:
    """Render PATH and make the cluster match it (staged SSA, optional prune and wait)."""
    revision = await anyio.to_thread.run_sync(directory_revision, settings.path)
    request = SyncRequest(
        directory=settings.path,
        render=settings.render,
        options=replace(_options(settings, revision), on_entry=on_entry),
        prune=settings.prune,
        allow_empty=settings.allow_empty,
        wait=settings.wait,
        wait_timeout_s=settings.wait_timeout_s,
    )
    handle = start_tracing(settings.tracing)
    try:
        async with open_cluster(settings.cluster) as cluster:
            store = (
                ConfigMapInventoryStore(
                    cluster.transport,
                    namespace=settings.inventory_namespace,
                    name=settings.inventory,
                )
                if settings.inventory
                else None
            )
            commit = CommitInfo(
                sync=settings.sync,
                repository_url=str(settings.path.resolve()),
                ref="",
                ref_type="directory",
                sha=revision,
                trigger="cli",
            )
            tracing = handle.tracing or NoTracing()
            with tracing.commit(commit) as root:
                traced = replace(
                    request, options=replace(request.options, traceparent=root.traceparent)
                )
                outcome = await sync_once(
                    traced, cluster=cluster, render=render, inventory=store, tracing=tracing
                )
                if not outcome.ok:
                    root.record_error(outcome.message)
            return outcome
    finally:
        await anyio.to_thread.run_sync(handle.shutdown)


@dataclass(frozen=True)
class ObjectDiff:
    ref: ObjectRef
    diff: str = ""
    error: str | None = None


async def diff_directory(settings: DirectorySettings) -> list[ObjectDiff]:
    """Per object, the diff between live and what an apply would store (server dry-run)."""
    revision = await anyio.to_thread.run_sync(directory_revision, settings.path)
    options = _options(settings, revision)
    async with open_cluster(settings.cluster) as cluster:
        await cluster.refresh_discovery()
        manifests = await render(
            settings.path, settings.render, is_namespaced=cluster.is_namespaced
        )
        diffs: dict[int, ObjectDiff] = {}
        limiter = anyio.CapacityLimiter(max(1, settings.concurrency))

        async def diff_one(index: int, manifest: Manifest) -> None:
            async with limiter:
                try:
                    live, merged = await cluster.preview(manifest, options)
                except AioreconcileError as e:
                    diffs[index] = ObjectDiff(manifest.ref, error=str(e))
                    return
            diffs[index] = ObjectDiff(manifest.ref, unified_diff(manifest.ref, live, merged))

        async with anyio.create_task_group() as tasks:
            for index, manifest in enumerate(manifests):
                tasks.start_soon(diff_one, index, manifest)
        pruned = await _prune_preview(cluster, settings, manifests) if settings.prune else []
        return [diffs[i] for i in range(len(manifests))] + pruned


async def _prune_preview(
    cluster: KubeCluster, settings: DirectorySettings, manifests: list[Manifest]
) -> list[ObjectDiff]:
    """What ``apply --prune`` with the same inventory would delete: the same set arithmetic
    and the same refusal (``allow_prune``) as the apply, shown as deletions."""
    if settings.inventory is None:
        return []
    store = ConfigMapInventoryStore(
        cluster.transport, namespace=settings.inventory_namespace, name=settings.inventory
    )
    previous = await store.load()
    allowed, _ = allow_prune(
        fetch_ok=True,
        render_ok=True,
        apply_failed=0,
        current_empty=not manifests,
        allow_empty=settings.allow_empty,
    )
    if previous is None or not allowed:
        return []
    current = Inventory.of(m.ref for m in manifests)
    found: list[ObjectDiff] = []
    for ref in stale(previous, current):
        live = await cluster.get(ref)
        if live is not None:
            found.append(ObjectDiff(ref, unified_diff(ref, live, None)))
    return found


def default_sync_name(path: Path, inventory: str | None) -> str:
    """The sync label value for a CLI apply: the inventory name, else the directory's name."""
    base = inventory or path.resolve().name or "cli"
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in base)[:63]
    return cleaned.strip("-_.") or "cli"


@dataclass(frozen=True)
class LeaderElectionSettings:
    """``run --leader-elect``: the Lease ``namespace/name`` and how this replica is known."""

    namespace: str | None = None  # None: the pod's namespace, else "default"
    name: str = "aioreconcile"
    identity: str = ""  # empty: <hostname>_<random>, as client-go users name candidates
    timings: LeaseTimings = field(default_factory=LeaseTimings)


def candidate_identity() -> str:
    """Unique per process: a pod's hostname is its name; the suffix tells restarts apart."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


MIN_RETRY_DELAY_S = Backoff.initial_s  # a cap below the first delay would not be a cap


@dataclass(frozen=True)
class RunSettings:
    """``aioreconcile run [--config FILE]`` in plain data. Without ``config`` the controller
    runs in CRD mode: its syncs are the Sync objects in ``watch_namespace`` (all if empty)."""

    config: Path | None
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    listen_host: str = "127.0.0.1"  # webhooks: the listener to expose
    listen_port: int = 8080
    ops_host: str = "127.0.0.1"  # /healthz /readyz /metrics /status: keep it private
    ops_port: int = 8081
    limits: ListenerLimits = field(default_factory=ListenerLimits)
    namespace: str = "default"  # where standalone inventories (ConfigMaps) live
    cache_dir: Path | None = None
    concurrency: int = 16  # syncs reconciled at once
    heal_concurrency: int = 32  # drift heals at once, a limit of their own (controlling.py)
    drain_timeout_s: float = 30.0
    watch_read_timeout_s: float = WATCH_READ_TIMEOUT_S
    # The longest wait before retrying a failed sync (the cap of its jittered exponential
    # backoff, 0.1 s doubling); Flux's --max-retry-delay.
    max_retry_delay_s: float = Backoff.cap_s
    tracing: TracingSettings = field(default_factory=TracingSettings.from_environ)
    leader_election: LeaderElectionSettings | None = None  # None: this replica always writes
    watch_namespace: str = ""  # CRD mode: "" watches Syncs in every namespace
    status_period_s: float = 1.0  # CRD mode: at most one status write per Sync per period
    event_window_s: float = 30.0  # CRD mode: Events per Sync and reason aggregated this long
    shards: int = 0  # CRD mode, with leader_election: split the Syncs in this many shards
    # The CLI's ``run`` (a process of its own): ``gc.freeze()`` once started, see
    # ``freeze_startup_heap``. Off for a controller run inside another program (the tests).
    freeze_startup_heap: bool = False


# How often ``MemoryRelease`` collects the whole heap, frozen part included, at most.
FULL_COLLECTION_EVERY_S = 600.0


def release_memory() -> None:
    """After a reconcile, hand the heap it freed back to the OS (the controller calls it when
    no other work runs, ``Controller._release_due``: it holds the event loop).

    Rendering and applying thousands of objects peaks well above what the controller keeps;
    CPython's allocator and glibc keep that memory mapped, so an idle controller would show the
    peak as its RSS. ``malloc_trim`` exists on glibc only; elsewhere this is just a collection.
    ``AIORECONCILE_MALLOC_TRIM=off`` leaves the trim out, so that a measurement of idle memory
    (bench/drift.py ``--no-trim``) shows what the controller holds without it.
    """
    gc.collect()
    _trim()


class MemoryRelease:
    """``release_memory`` for ``run``, whose heap at start-up is frozen (``freeze_startup_heap``):
    each release also freezes what survived it, and collects only what is not frozen, so neither
    it nor the collections CPython starts by itself walk the whole heap again.

    Why: at 100,000 objects the controller holds ~1 million objects the collector tracks (the
    refs, the per-object tables, the watch caches); a full collection took 164-230 ms with the
    event loop held, and CPython's own full collections (run once the objects that survived
    into the oldest generation since the last one exceed a quarter of it: a heal storm's watch
    events do) stalled heals and webhooks as long (docs/controller-benchmarks.md). Instagram
    froze its long-lived heap for the same reason (``gc.freeze``, CPython's documentation).
    Frozen objects are still freed by reference counting; only a reference cycle among them that
    became garbage waits, until the next full collection: the first release, then at most every
    ``full_every_s`` (``gc.unfreeze`` first)."""

    def __init__(
        self,
        *,
        full_every_s: float = FULL_COLLECTION_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._full_every_s = full_every_s
        self._clock = clock
        self._full_at: float | None = None

    def __call__(self) -> None:
        now = self._clock()
        if self._full_at is None or now - self._full_at >= self._full_every_s:
            gc.unfreeze()
            self._full_at = now
        gc.collect()
        gc.freeze()
        _trim()


def _trim() -> None:
    if os.environ.get("AIORECONCILE_MALLOC_TRIM", "").lower() == "off":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def freeze_startup_heap() -> None:
    """Take everything alive at start-up out of every later garbage collection.

    The modules, the tracing SDK and its exporter (~200 modules, ~11,000 tracked objects more
    than without tracing), the config: they live as long as the process, yet every
    ``gc.collect()`` of ``release_memory`` (one per reconcile) traversed them again; on a
    1,000-object push that full collection took 20-28 ms of the controller's ~0.5 s, a few ms
    more with tracing on (docs/tracing.md, "What it costs"). ``gc.freeze`` moves them to the
    permanent generation, as CPython's documentation suggests for long-lived start-up state
    (Instagram's reason for adding it); they are still freed by reference counting.
    """
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()


def _git_cache_dir(settings: RunSettings) -> Path:
    if settings.cache_dir is not None:
        return settings.cache_dir
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aioreconcile" / "git"


class Ports(NamedTuple):
    """The ports the controller's two listeners are bound to (useful when asked for 0)."""

    webhooks: int
    ops: int


async def run_controller(
    settings: RunSettings,
    *,
    task_status: anyio.abc.TaskStatus[Ports] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the controller until SIGTERM/SIGINT (or cancellation): webhooks, pollers, watches,
    queue workers and the operational endpoints in one task group; then drain and exit."""
    if settings.config is None:
        config = ControllerConfig()
    else:
        config = parse_config(
            await anyio.Path(settings.config).read_text(), origin=str(settings.config)
        )
    secrets = {receiver.name: load_secret(receiver) for receiver in config.receivers}
    registry = Registry()
    cache = GitCache(_git_cache_dir(settings), registry=registry)
    handle = start_tracing(settings.tracing)
    install_log_correlation()
    if settings.freeze_startup_heap:
        freeze_startup_heap()
    try:
        await _run_controller(
            settings,
            config,
            secrets=secrets,
            registry=registry,
            cache=cache,
            tracing=handle,
            task_status=task_status,
        )
    finally:
        await anyio.to_thread.run_sync(handle.shutdown)


async def _run_controller(
    settings: RunSettings,
    config: ControllerConfig,
    *,
    secrets: dict[str, bytes],
    registry: Registry,
    cache: GitCache,
    tracing: TracingHandle,
    task_status: anyio.abc.TaskStatus[Ports],
) -> None:
    # The watches' read timeout bounds every request too: a connection silent that long is dead.
    async with (
        open_cluster(settings.cluster, read_timeout_s=settings.watch_read_timeout_s) as cluster,
        _lease_transport(settings) as leases,
    ):
        await cluster.refresh_discovery()
        controller_ref: list[Controller] = []
        crds: list[SyncResources] = []
        manager = WatchManager(
            cluster.transport,
            cluster.discovery,
            on_event=lambda event: controller_ref[0].on_watch_event(event),
            read_timeout_s=settings.watch_read_timeout_s,
        )
        inventories = {
            spec.name: ConfigMapInventoryStore(
                cluster.transport,
                namespace=settings.namespace,
                name=f"aioreconcile-inventory-{spec.name}",
            )
            for spec in config.syncs
        }
        watcher = ManagedKindsWatcher(manager, cluster.discovery)
        controller = Controller(
            config.syncs,
            cluster=cluster,
            clusters=_sync_clusters(cluster, config),
            render=render,
            sources={spec.name: cache.source(spec.source) for spec in config.syncs},
            inventories=inventories,
            watcher=watcher,
            registry=registry,
            concurrency=settings.concurrency,
            retry=Backoff(cap_s=settings.max_retry_delay_s),
            heal_concurrency=settings.heal_concurrency,
            after_reconcile=MemoryRelease() if settings.freeze_startup_heap else release_memory,
            tracing=tracing.tracing or NoTracing(),
            on_change=lambda state: crds[0].on_change(state) if crds else None,
        )
        controller_ref.append(controller)
        if settings.config is None:
            crds.append(
                SyncResources(
                    controller=controller,
                    client=KubeSyncResources(cluster.transport, cluster.discovery),
                    parts=_CrdParts(cluster, cache),
                    cluster=cluster,
                    registry=registry,
                    status_period_s=settings.status_period_s,
                    event_window_s=settings.event_window_s,
                    shards=settings.shards,
                )
            )
        gained_hooks: list[Callable[[int], None]] = []
        sharder = (
            _shard_elector(leases, settings, registry, crds[0], gained_hooks)
            if leases and crds
            else None
        )
        elector = None if sharder else _elector(cluster, settings.leader_election, registry)
        requests: ReconcileRequests | None = None
        if crds:
            requests = ReconcileRequests(
                catalog=SyncCatalog(),
                requester=KubeSyncResources(cluster.transport, cluster.discovery),
                owns=lambda sync: (
                    (elector is None or elector.leading) and sync in controller.states
                ),
                push=controller.push,
                registry=registry,
            )
        app = build_app(
            config.receivers,
            secrets=secrets,
            syncs=(
                requests.catalog.specs
                if requests is not None
                else lambda: [state.spec for state in controller.states.values()]
            ),
            enqueue=controller.push,
            record=requests.record if requests is not None else None,
            body_timeout_s=settings.limits.body_timeout_s,
            tracing=tracing.tracing,
        )
        warm = anyio.Event()  # a standby's watches have listed: ready to take over
        role: Callable[[], str] | None = None
        if sharder is not None:
            role = partial(_shards_role, sharder)
        elif elector is not None:
            role = partial(_elector_role, elector)
        ops = build_ops_app(
            status=lambda: (
                {"syncs": controller.status()} | _leadership_view(elector) | _sharding_view(sharder)
            ),
            metrics=registry.exposition,
            ready=lambda: controller.ready.is_set() or warm.is_set(),
            role=role,
        )
        limits = settings.limits
        lost: list[LeadershipLost] = []
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as tasks:
                async with (
                    serve(
                        ops, host=settings.ops_host, port=settings.ops_port, limits=limits
                    ) as ops_port,
                    serve(
                        app, host=settings.listen_host, port=settings.listen_port, limits=limits
                    ) as port,
                ):
                    await tasks.start(manager.run)
                    receivers: ReceiverResources | None = None
                    if crds and requests is not None:
                        receivers = ReceiverResources(
                            client=KubeSyncResources(cluster.transport, cluster.discovery),
                            routes=LiveReceivers(app),
                            registry=registry,
                            writes=lambda: (
                                RECEIVER_SHARD in sharder.held
                                if sharder is not None
                                else elector is None or elector.leading
                            ),
                        )
                        if sharder is not None:
                            gained_hooks.append(partial(_write_receivers, receivers))
                        # In the background: the election never waits for these LISTs.
                        tasks.start_soon(_receive, settings, cluster, crds[0], requests, receivers)

                    async def crd_mode(
                        *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                    ) -> None:
                        """CRD mode: the Sync watch and its writers (status, finalizers,
                        Events). With leader election only the leader runs them; every
                        replica serves the Receivers (``_start_receiving``), and the leader
                        writes their status."""
                        async with anyio.create_task_group() as crd_tasks:
                            if crds:
                                await _start_crd_mode(crd_tasks, settings, cluster, crds[0])
                            if receivers is not None:
                                receivers.write_all()  # their status is the leader's to write
                            task_status.started()

                    if elector is None:
                        await tasks.start(controller.run)
                        await tasks.start(crd_mode)
                        if sharder is not None:
                            tasks.start_soon(sharder.run)
                    else:

                        async def work() -> None:
                            async with anyio.create_task_group() as leading:
                                await leading.start(controller.run)
                                await leading.start(crd_mode)

                        standby = partial(
                            warm_watches,
                            inventories,
                            watcher,
                            every_s=_STANDBY_REFRESH_S,
                            on_warm=warm.set,
                        )
                        tasks.start_soon(_lead, elector, work, standby, tasks.cancel_scope, lost)
                    logger.info(
                        "controller running",
                        extra={
                            "port": port,
                            "ops_port": ops_port,
                            "syncs": len(controller.states),
                            "mode": "file" if settings.config is not None else "crd",
                            "watch_namespace": settings.watch_namespace or "(all)",
                        },
                    )
                    task_status.started(Ports(webhooks=port, ops=ops_port))
                    async for received in signals:
                        logger.info("stopping", extra={"signal": signal.Signals(received).name})
                        break
                # Both listeners are closed: no new webhooks. Let in-flight work finish (a
                # standby has none: its queue never ran). Cancelling then ends the leader's
                # work before ``lead`` releases the Lease.
                if controller.ready.is_set():
                    drained = await controller.drain(timeout_s=settings.drain_timeout_s)
                    logger.info("drained" if drained else "drain timed out; stopping anyway")
                tasks.cancel_scope.cancel()
        if lost:
            raise lost[0]


def _elector(
    cluster: KubeCluster, election: LeaderElectionSettings | None, registry: Registry
) -> LeaseElector | None:
    """The Lease candidate of ``--leader-elect``, its ``aioreconcile_leader`` gauge kept."""
    if election is None:
        return None
    identity = election.identity or candidate_identity()
    gauge = registry.gauge(
        "aioreconcile_leader",
        "1 while this replica holds the leader Lease, else 0.",
        ["identity"],
    ).labels(identity=identity)
    gauge.set(0)
    return LeaseElector(
        cluster.transport,
        namespace=election.namespace or pod_namespace(),
        name=election.name,
        identity=identity,
        timings=election.timings,
        on_change=lambda leading: gauge.set(1 if leading else 0),
    )


async def _lead(
    elector: LeaseElector,
    work: Callable[[], Awaitable[None]],
    standby: Callable[[], Coroutine[Any, Any, None]],
    scope: anyio.CancelScope,
    lost: list[LeadershipLost],
) -> None:
    """Standby until elected (watches warm, webhooks kept), then the controller's work; a lost
    Lease stops the whole process (``run`` exits non-zero, as controller-runtime's managers)."""
    try:
        await lead(elector, work, standby=standby)
    except LeadershipLost as e:
        lost.append(e)
        scope.cancel()


@asynccontextmanager
async def _lease_transport(settings: RunSettings) -> AsyncIterator[KubeTransport | None]:
    """With ``--shards``: a connection pool of the shard Leases' own, so that their renewals
    never queue behind the reconciles' requests and watches on the controller's pool (client-go
    users give the leader election its own client for the same reason)."""
    if not settings.shards or settings.leader_election is None:
        yield None
        return
    access = settings.cluster
    async with await KubeTransport.connect(
        access.kubeconfig, context=access.context, max_connections=4
    ) as transport:
        yield transport


def _shard_elector(
    transport: KubeTransport,
    settings: RunSettings,
    registry: Registry,
    syncs: SyncResources,
    gained_hooks: list[Callable[[int], None]],
) -> ShardElector | None:
    """``run --shards``: this replica's shard Leases, its ``aioreconcile_shards_held`` kept;
    ``gained_hooks`` are told of each shard taken (the Receivers' status writer)."""
    election = settings.leader_election
    if not settings.shards or election is None:
        return None
    identity = election.identity or candidate_identity()
    gauge = registry.gauge(
        "aioreconcile_shards_held",
        "How many shard Leases this replica holds (run --shards).",
        ["identity"],
    ).labels(identity=identity)
    gauge.set(0)

    def gained(shard: int) -> None:
        syncs.gain_shard(shard)
        gauge.set(len(syncs.held_shards))
        for hook in gained_hooks:
            hook(shard)

    async def lost(shard: int) -> None:
        await syncs.lose_shard(shard)
        gauge.set(len(syncs.held_shards))

    return ShardElector(
        transport,
        namespace=election.namespace or pod_namespace(),
        name=election.name,
        identity=identity,
        shards=settings.shards,
        timings=election.timings,
        on_gain=gained,
        on_lose=lost,
    )


def _write_receivers(receivers: ReceiverResources, shard: int) -> None:
    """The Receivers' status is the holder of ``RECEIVER_SHARD``'s to write: all of it, once
    taken (a status left unwritten meanwhile is written now)."""
    if shard == RECEIVER_SHARD:
        receivers.write_all()


def _elector_role(elector: LeaseElector) -> str:
    return "leader" if elector.leading else "standby"


def _shards_role(sharder: ShardElector) -> str:
    held = sorted(sharder.held)
    return f"shards {','.join(map(str, held))}" if held else "shards none"


def _sharding_view(sharder: ShardElector | None) -> dict[str, object]:
    if sharder is None:
        return {}
    return {
        "sharding": {
            "leases": f"{sharder.namespace}/{sharder.name}-shard-*",
            "identity": sharder.identity,
            "shards": sharder.shards,
            "held": sorted(sharder.held),
            "members": sharder.members(),
            "holders": {str(k): v or None for k, v in sharder.holders().items()},
        }
    }


def _leadership_view(elector: LeaseElector | None) -> dict[str, object]:
    if elector is None:
        return {}
    return {
        "leadership": {
            "lease": f"{elector.namespace}/{elector.name}",
            "identity": elector.identity,
            "role": "leader" if elector.leading else "standby",
            "holder": elector.holder or None,
        }
    }


async def _start_crd_mode(
    tasks: anyio.abc.TaskGroup, settings: RunSettings, cluster: KubeCluster, syncs: SyncResources
) -> None:
    """Watch Syncs (in ``watch_namespace`` or all) and act on them: the leader's part."""
    await tasks.start(syncs.run)
    watch = watch_resources(
        cluster.transport, SYNCS, namespace=settings.watch_namespace, on_event=syncs.on_event
    )
    await tasks.start(run_watch, watch)


async def _receive(
    settings: RunSettings,
    cluster: KubeCluster,
    syncs: SyncResources,
    requests: ReconcileRequests,
    receivers: ReceiverResources,
) -> None:
    """Every replica's part of CRD mode: serve the Receivers' paths, match deliveries against
    the Sync objects (a read-only watch: ``SyncCatalog``) and record them on the Syncs
    (``reactor.requesting``); only the leader writes the Receivers' status (``writes``).
    Secrets are watched so that a Receiver's rotated token moves its path at once and (on the
    leader) a sync failing for want of a credential looks again as soon as it is fixed; their
    values are read when used, never kept from the watch."""

    def on_secret(event: WatchEvent) -> None:
        syncs.on_secret(event.ref.namespace, event.ref.name)  # knows no Sync on a standby
        receivers.on_secret(event.ref.namespace, event.ref.name)

    async with anyio.create_task_group() as tasks:
        await tasks.start(receivers.run)
        for resource, on_event in (
            (SYNCS, requests.catalog.on_event),
            (RECEIVERS, receivers.on_event),
            (SECRETS, on_secret),
        ):
            watch = watch_resources(
                cluster.transport, resource, namespace=settings.watch_namespace, on_event=on_event
            )
            await tasks.start(run_watch, watch)


class _CrdParts:
    """``reactor.ports.SyncParts`` for CRD mode: Git credentials and verification keys are
    read from the Sync's namespace at each use (``adapters.kube.resources.read_data``); the
    inventory is a ConfigMap beside the Sync; a ``serviceAccountName`` is impersonated."""

    def __init__(self, cluster: KubeCluster, cache: GitCache) -> None:
        self._cluster = cluster
        self._cache = cache

    async def _read(self, ref: DataRef) -> Mapping[str, bytes] | None:
        return await read_data(self._cluster.transport, ref)

    def source(self, spec: SyncSpec) -> GitSource:
        return self._cache.source(spec.source, data=self._read)

    def inventory(self, namespace: str, name: str) -> ConfigMapInventoryStore:
        return ConfigMapInventoryStore(self._cluster.transport, namespace=namespace, name=name)

    def cluster(self, spec: SyncSpec) -> KubeCluster | None:
        if spec.service_account is None:
            return None
        return self._cluster.impersonating(spec.service_account)


def _sync_clusters(cluster: KubeCluster, config: ControllerConfig) -> dict[str, KubeCluster]:
    """Per sync with a ``serviceAccount``, the cluster as that account (one connection pool).

    Impersonated: everything done to the sync's objects (LIST, GET, dry-run, apply, DELETE,
    health reads, drift heals). Not impersonated: discovery, the shared drift watch (it only
    reads labelled objects, and whatever it reports is healed through the sync's own view)
    and the inventory ConfigMap (the controller's bookkeeping in its own namespace, where a
    tenant's account has no business; a tenant cannot widen prune through it, since every
    DELETE is made as the account). As Flux's kustomize-controller does."""
    clusters: dict[str, KubeCluster] = {}
    for spec in config.syncs:
        if spec.service_account is not None:
            clusters[spec.name] = cluster.impersonating(spec.service_account)
            logger.info(
                "sync acts as its service account",
                extra={"sync": spec.name, "user": spec.service_account.user},
            )
    return clusters


@dataclass(frozen=True)
class SyncResult:
    """What ``aioreconcile reconcile sync`` prints: the Sync's status once it handled the
    request."""

    ready: str  # the Ready condition's status: True, False or Unknown
    reason: str
    message: str
    revision: str | None


async def reconcile_sync(
    settings: ClusterSettings,
    namespace: str,
    name: str,
    *,
    timeout_s: float,
    poll_s: float = 0.5,
    requested_at: str | None = None,
) -> SyncResult:
    """Ask the controller to reconcile a Sync now (the ``reconcile.aioreconcile.dev/requestedAt``
    annotation, as ``flux reconcile`` sets Flux's) and wait until its status says it handled
    that request. Raises TimeoutError after ``timeout_s``."""
    value = requested_at or datetime.now(UTC).isoformat()
    # No hint nor trace: a webhook's, left from an earlier hand-off, is not this request's.
    annotations = {
        REQUESTED_AT_ANNOTATION: value,
        REVISION_HINT_ANNOTATION: None,
        REQUEST_TRACE_ANNOTATION: None,
    }
    async with open_cluster(settings) as cluster:
        await patch_sync(
            cluster.transport, namespace, name, {"metadata": {"annotations": annotations}}
        )
        with anyio.fail_after(timeout_s):
            while True:
                status = (await read_sync(cluster.transport, namespace, name)).get("status") or {}
                if status.get("lastHandledReconcileAt") == value:
                    break
                await anyio.sleep(poll_s)
    conditions = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    ready: dict[str, object] = conditions[0] if conditions else {}
    return SyncResult(
        ready=str(ready.get("status", "Unknown")),
        reason=str(ready.get("reason", "")),
        message=str(ready.get("message", "")),
        revision=str(status["lastAppliedRevision"]) if status.get("lastAppliedRevision") else None,
    )


async def suspend_sync(
    settings: ClusterSettings, namespace: str, name: str, *, suspend: bool
) -> None:
    """Set a Sync's ``spec.suspend`` (the controller sees the new generation at once)."""
    async with open_cluster(settings) as cluster:
        await patch_sync(cluster.transport, namespace, name, {"spec": {"suspend": suspend}})


def tracing_settings(
    *,
    endpoint: str | None,
    service_name: str | None,
    protocol: str | None = None,
    sampler: str | None = None,
    sampler_arg: str | None = None,
) -> TracingSettings:
    """The standard OTEL_* environment, with the CLI's flags (when given) on top."""
    return TracingSettings.from_environ(
        endpoint=endpoint,
        service_name=service_name,
        protocol=protocol,
        sampler=sampler,
        sampler_arg=sampler_arg,
    )


__all__ = [
    "MIN_RETRY_DELAY_S",
    "MIN_WATCH_READ_TIMEOUT_S",
    "ClusterSettings",
    "DirectorySettings",
    "LeaderElectionSettings",
    "ListenerLimits",
    "MemoryRelease",
    "ObjectDiff",
    "Ports",
    "RunSettings",
    "SyncResult",
    "apply_directory",
    "default_sync_name",
    "diff_directory",
    "directory_revision",
    "reconcile_sync",
    "release_memory",
    "run_controller",
    "suspend_sync",
    "tracing_settings",
]
