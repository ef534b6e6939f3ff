"""CRD mode: Sync custom resources in, the controller's registry, the Syncs' status and Events
out.

Watch events of Syncs land in ``on_event`` (synchronous, never blocking) and become keys of a
work queue, one serial lane per Sync: creating, editing, suspending or deleting a Sync reaches
``Controller.upsert``/``remove`` at once. An event that changes nothing we act on (the
generation, the ``requestedAt`` annotation, the labels, the finalizer, a deletion) is dropped,
so our own status writes never come back as work (Flux's ``GenerationChangedPredicate``).

Status is written batched: a change of a sync's state only marks it dirty; a writer loop
writes each dirty Sync at most once per ``STATUS_PERIOD_S`` and only when the status it would
write differs from the last one written (``resources.status_changed``), so a heal storm of
200 objects is a handful of status writes, not 200.

Events (events.k8s.io/v1) are derived from the same state changes, aggregated per Sync and
reason: the first goes out at once, later ones within ``EVENT_WINDOW_S`` are counted and sent
as one Event with a ``series`` when the window ends (client-go's EventCorrelator aggregates
and rate-limits by source, object and reason in the same spirit).

Deletion: the controller adds the finalizer ``aioreconcile.dev/finalizer`` to every Sync it
acts on. A Sync being deleted is removed from the controller (a reconcile under way finishes
first), then its objects are deleted (``prune: true``, Flux's garbage collection on deletion)
or released from our labels (``prune: false``), its inventory ConfigMap is deleted, and the
finalizer removed.

Sharding (``run --shards``): every replica watches every Sync (its cache is warm for a
takeover) but acts only on those of the shards whose Lease it holds (``engine.sharding.place``:
the ``sharding.aioreconcile.dev/key`` label, else a stable hash). ``gain_shard`` queues a
shard's Syncs; ``lose_shard`` cancels their work under way, forgets them, and returns once
nothing of that shard runs any more, so the shard's Lease may be given back.
"""

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import anyio.abc

from aioreconcile.engine.applying import ApplyOptions
from aioreconcile.engine.changeset import Action
from aioreconcile.engine.config import DataRef, GitSourceSpec, ServiceAccountRef, SyncSpec
from aioreconcile.engine.configuration import ConfigError
from aioreconcile.engine.errors import AioreconcileError
from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.metrics import Counter, Registry
from aioreconcile.engine.model import JsonObject, ObjectRef
from aioreconcile.engine.outcomes import Reason
from aioreconcile.engine.receivers import WEBHOOK_PATH_PREFIX
from aioreconcile.engine.redaction import printable, redact_text
from aioreconcile.engine.resources import (
    FINALIZER,
    REQUESTED_AT_ANNOTATION,
    REQUESTED_AT_MAX,
    inventory_name,
    receiver_from_resource,
    receiver_status,
    request_trace,
    requested_at,
    revision_hint,
    status_changed,
    sync_from_resource,
    sync_identity,
    sync_status,
)
from aioreconcile.engine.sharding import Placement, place
from aioreconcile.reactor.controlling import Controller, SyncState
from aioreconcile.reactor.ports import Cluster, ReceiverRoutes, SyncParts, SyncResourceClient
from aioreconcile.reactor.queueing import WorkQueue

logger = logging.getLogger(__name__)

STATUS_PERIOD_S: Final = 1.0
EVENT_WINDOW_S: Final = 30.0
_NOTE_MAX: Final = 1024  # events.k8s.io/v1 note is at most 1 KiB

Key = tuple[str, str]  # (namespace, name) of a Sync


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _Sync:
    """What we know of one Sync object besides the controller's state of its sync."""

    namespace: str
    name: str
    identity: str
    generation: int = 0  # of the spec the controller runs (or refused)
    signature: tuple[object, ...] | None = None  # what we acted on last (see ``_signature``)
    invalid: str | None = None  # why the spec is refused
    requested: str | None = None  # the requestedAt value being handled
    request_mark: int = 0  # the sync's reconcile count when it was requested
    handled: str | None = None  # lastHandledReconcileAt
    hint: str | None = None  # the revision hint of the last request acted on
    written: JsonObject | None = None  # the status as last written (or found)
    seen_reconciles: int = 0  # for Events: what the last look saw
    seen_heals: int = 0
    shard: int = 0


@dataclass
class _Pending:
    """Events of one (Sync, reason) within the current window, not yet sent."""

    type: str
    action: str
    note: str
    count: int = 0
    first: str = ""
    last_sent: float | None = None


@dataclass
class SyncResources:
    """Keeps the controller's registry in step with the Sync objects, and writes back."""

    controller: Controller
    client: SyncResourceClient
    parts: SyncParts
    cluster: Cluster  # deletes/reads as the controller, for a Sync without a service account
    registry: Registry
    status_period_s: float = STATUS_PERIOD_S
    event_window_s: float = EVENT_WINDOW_S
    shards: int = 0  # run --shards: act only on the Syncs of held shards; 0: on every Sync
    clock: Callable[[], float] = time.monotonic
    _held: set[int] = field(default_factory=set)
    _working: dict[Key, set[anyio.CancelScope]] = field(default_factory=dict)
    _latest: dict[Key, JsonObject | None] = field(default_factory=dict)
    _syncs: dict[Key, _Sync] = field(default_factory=dict)
    _by_identity: dict[str, Key] = field(default_factory=dict)
    _dirty: set[Key] = field(default_factory=set)
    _wake: anyio.Event | None = None
    _events: dict[tuple[Key, str], _Pending] = field(default_factory=dict)
    queue: WorkQueue[Key] = field(init=False)
    status_writes: Counter = field(init=False)
    events_sent: Counter = field(init=False)

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self._process, registry=self.registry, name="syncs")
        self.status_writes = Counter(
            "aioreconcile_sync_status_writes_total",
            "Status writes to Sync objects.",
            [],
            registry=self.registry,
        )
        self.events_sent = Counter(
            "aioreconcile_sync_events_total",
            "Kubernetes Events recorded about Syncs, by reason.",
            ["reason"],
            registry=self.registry,
        )

    # --- in: watch events of Syncs ---------------------------------------------------------------

    def on_event(self, event: WatchEvent) -> None:
        """A Sync was added, changed or deleted: queue it, unless only its status moved."""
        key = (event.ref.namespace, event.ref.name)
        if event.type is EventType.DELETED:
            self._latest[key] = None
            self.queue.put(key)
            return
        self._latest[key] = event.object
        known = self._syncs.get(key)
        if known is None and not self._ours(self._placement(key, event.object)):
            return  # another replica's shard: kept for a takeover, not acted on
        if known is None or known.signature != _signature(event.object):
            self.queue.put(key)

    def on_secret(self, namespace: str, name: str) -> None:
        """A Secret or ConfigMap changed: a sync that uses it and is not Ready looks again now
        (the value itself is read at the next call anyway; this only saves the backoff)."""
        for key, sync in self._syncs.items():
            state = self.controller.states.get(sync.identity)
            if key[0] != namespace or state is None or state.reason == Reason.SUCCEEDED:
                continue
            source = state.spec.source
            used = {r.name for r in (source.auth.secret, source.verify.keys) if r is not None}
            if name in used:
                self.controller.poll(sync.identity)

    def on_change(self, state: SyncState) -> None:
        """The controller recorded something for a sync: its status and Events are due."""
        key = self._by_identity.get(state.spec.name)
        if key is not None:
            self._mark(key)

    # --- sharding ------------------------------------------------------------------------------

    @property
    def held_shards(self) -> frozenset[int]:
        return frozenset(self._held)

    def gain_shard(self, shard: int) -> None:
        """This replica holds ``shard``'s Lease now: act on its Syncs (the watch cache has them)."""
        self._held.add(shard)
        for key, obj in self._latest.items():
            if obj is not None and self._placement(key, obj).shard == shard:
                self.queue.put(key)

    async def lose_shard(self, shard: int) -> None:
        """``shard``'s Lease is lost or about to be given back: cancel the work of its Syncs
        (their lanes here, their reconciles and heals in the controller), forget them, and
        return once none of it runs. Nothing is deleted or released: the next holder goes on."""
        self._held.discard(shard)
        for key, sync in list(self._syncs.items()):
            if sync.shard != shard:
                continue
            for scope in self._working.get(key, ()):
                scope.cancel()
            await self.controller.abandon(sync.identity)
            self._forget(key, keep_cached=True)
        logger.info("shard given up: its syncs are no longer ours", extra={"shard": shard})

    def _placement(self, key: Key, obj: JsonObject) -> Placement:
        if not self.shards:
            return Placement(0)
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return place(key[0], key[1], labels, self.shards)

    def _ours(self, placement: Placement) -> bool:
        return not self.shards or placement.shard in self._held

    def _mark(self, key: Key) -> None:
        self._dirty.add(key)
        if self._wake is not None:
            self._wake.set()

    # --- running ---------------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tasks:
            await tasks.start(self.queue.run)
            tasks.start_soon(self._write_forever)
            task_status.started()

    async def _write_forever(self) -> None:
        """Write dirty statuses and due Events, then rest ``status_period_s``: each Sync gets
        at most one status write per period, however often its state changed."""
        while True:
            self._wake = anyio.Event()
            if not self._dirty and not self._events_due():
                with anyio.move_on_after(self._next_event_in()):
                    await self._wake.wait()
            dirty, self._dirty = self._dirty, set()
            for key in dirty:
                try:
                    await self._write_status(key)
                except AioreconcileError as e:
                    logger.warning(
                        "could not write a Sync's status",
                        extra={"sync": f"{key[0]}/{key[1]}", "error": str(e)},
                    )
                    self._dirty.add(key)  # next period
            await self._send_events()
            await anyio.sleep(self.status_period_s)

    # --- one Sync object -------------------------------------------------------------------------

    async def _process(self, key: Key) -> None:
        """One Sync's lane; cancelled by ``lose_shard`` when its shard goes elsewhere."""
        scope = anyio.CancelScope()
        working = self._working.setdefault(key, set())
        working.add(scope)
        try:
            with scope:
                await self._process_one(key)
        finally:
            working.discard(scope)
            if not working:
                self._working.pop(key, None)

    async def _process_one(self, key: Key) -> None:
        obj = self._latest.get(key)
        known = self._syncs.get(key)
        if obj is None:  # gone without our finalizer (removed by hand): stop, touch nothing
            if known is not None:
                await self.controller.remove(known.identity)
                self._forget(key)
            return
        placement = self._placement(key, obj)
        if not self._ours(placement):
            if known is not None:  # moved to another shard (its label changed)
                await self.controller.abandon(known.identity)
                self._forget(key, keep_cached=True)
            return
        metadata = obj.get("metadata") or {}
        namespace, name = key
        if metadata.get("deletionTimestamp"):
            if FINALIZER in (metadata.get("finalizers") or []):
                await self._finalize(key, obj)
            return
        if FINALIZER not in (metadata.get("finalizers") or []):
            await self.client.set_finalizer(namespace, name, present=True)
        sync = known or self._register(key, obj)
        sync.signature = _signature(obj)
        sync.generation = int(metadata.get("generation") or 0)
        sync.shard = placement.shard
        try:
            if placement.problem is not None:
                raise ConfigError(f"Sync {namespace}/{name}", [placement.problem])
            spec = sync_from_resource(obj)
        except ConfigError as e:
            sync.invalid = str(e)
            await self.controller.remove(sync.identity)  # stop acting on it; prune nothing
            logger.warning("Sync refused", extra={"sync": f"{namespace}/{name}", "error": str(e)})
            self._event(key, "InvalidSpec", "Warning", "Refuse", str(e))
            self._mark(key)
            return
        sync.invalid = None
        self.controller.upsert(
            spec,
            source=self.parts.source(spec),
            inventory=self.parts.inventory(namespace, inventory_name(name)),
            cluster=self.parts.cluster(spec),
        )
        annotations = metadata.get("annotations") or {}
        requested = requested_at(annotations)
        if requested is None and annotations.get(REQUESTED_AT_ANNOTATION) is not None:
            shown = printable(str(annotations[REQUESTED_AT_ANNOTATION])[:64])
            logger.warning(
                "requestedAt refused: not 1-%d printable characters",
                REQUESTED_AT_MAX,
                extra={"sync": f"{namespace}/{name}", "requested_at": shown},
            )
        if requested is not None and requested not in (sync.handled, sync.requested):
            state = self.controller.states.get(sync.identity)
            sync.requested = requested
            sync.request_mark = state.reconciles if state is not None else 0
            # A webhook another replica recorded (reactor.requesting) names a commit; a hint
            # already used with an earlier request is stale (a hand-made requestedAt).
            hint = revision_hint(annotations)
            if hint is not None and hint == sync.hint:
                hint = None
            sync.hint = revision_hint(annotations)
            link = request_trace(annotations) if hint is not None else None
            self.controller.request(sync.identity, hint=hint, link=link)
        self._mark(key)

    def _register(self, key: Key, obj: JsonObject) -> _Sync:
        status = obj.get("status") or {}
        sync = _Sync(namespace=key[0], name=key[1], identity=sync_identity(*key))
        sync.written = status or None  # a restart rewrites nothing that is still true
        handled = status.get("lastHandledReconcileAt")
        sync.handled = handled if isinstance(handled, str) else None
        self._syncs[key] = sync
        self._by_identity[sync.identity] = key
        return sync

    def _forget(self, key: Key, *, keep_cached: bool = False) -> None:
        """Forget what we know of a Sync; ``keep_cached`` keeps the watched object, for a
        Sync that still exists but is another replica's now (its shard may come back)."""
        sync = self._syncs.pop(key, None)
        if sync is not None:
            self._by_identity.pop(sync.identity, None)
        if not keep_cached:
            self._latest.pop(key, None)
        self._dirty.discard(key)
        for event_key in [k for k in self._events if k[0] == key]:
            del self._events[event_key]

    async def _finalize(self, key: Key, obj: JsonObject) -> None:
        """Delete or release what the Sync applied, then let the API server delete it. Runs
        in the Sync's lane; ``remove`` waits for a reconcile under way, so nothing is applied
        after the objects are deleted. A failure is retried with backoff (the finalizer
        stays)."""
        namespace, name = key
        identity = sync_identity(namespace, name)
        state = await self.controller.remove(identity)
        prune = (obj.get("spec") or {}).get("prune", True) is not False
        store = self.parts.inventory(namespace, inventory_name(name))
        refs: set[ObjectRef] = set(state.desired) if state is not None else set()
        stored = await store.load()
        if stored is not None:
            refs |= set(stored.entries)
        ordered = sorted(refs, key=str)
        if prune:
            cluster = self._cluster_of(key, obj, state)
            revision = (state.revision if state is not None else None) or ""
            options = ApplyOptions(sync=identity, revision=revision, inventory=store.key)
            changes = await cluster.delete(ordered, options)
            failed = changes.failed
            if failed:
                raise AioreconcileError(f"could not delete {failed[0].ref}: {failed[0].error}")
            deleted = sum(1 for e in changes.entries if e.action is Action.DELETED)
            note = f"deleted {deleted} of {len(ordered)} objects (prune: true)"
        else:
            released = await self.client.release(ordered, sync=identity)
            note = f"released {released} objects from our labels (prune: false)"
        await self.client.delete_inventory(namespace, inventory_name(name))
        await self._send_event(key, "Finalized", "Normal", "Delete", note, count=1, first=None)
        await self.client.set_finalizer(namespace, name, present=False)
        logger.info("Sync deleted", extra={"sync": f"{namespace}/{name}", "result": note})
        self._forget(key)

    def _cluster_of(self, key: Key, obj: JsonObject, state: SyncState | None) -> Cluster:
        """Who deletes a deleted Sync's objects: its service account when it names one, even
        if its spec is refused now (it is forgotten then), else the controller."""
        if state is not None:
            return self.parts.cluster(state.spec) or self.cluster
        account = (obj.get("spec") or {}).get("serviceAccountName")
        if not account:
            return self.cluster
        identity = sync_identity(*key)
        spec = SyncSpec(
            name=identity,
            source=GitSourceSpec(url=""),
            service_account=ServiceAccountRef(key[0], str(account)),
        )
        return self.parts.cluster(spec) or self.cluster

    # --- out: status -----------------------------------------------------------------------------

    async def _write_status(self, key: Key) -> None:
        sync = self._syncs.get(key)
        if sync is None or (self.shards and sync.shard not in self._held):
            return
        view: Mapping[str, Any]
        if sync.invalid is not None:
            view = {"reason": "InvalidSpec", "message": sync.invalid}
        else:
            state = self.controller.states.get(sync.identity)
            if state is None:
                return
            view = state.view()
            self._derive_events(key, sync, state)
            if sync.requested is not None and state.reconciles > sync.request_mark:
                sync.handled, sync.requested = sync.requested, None
        status = sync_status(
            view,
            generation=sync.generation,
            handled_at=sync.handled,
            previous=sync.written,
            now=_now(),
        )
        if not status_changed(sync.written, status):
            return
        await self.client.write_status(sync.namespace, sync.name, status)
        self.status_writes.inc()
        sync.written = status

    # --- out: Events -----------------------------------------------------------------------------

    def _derive_events(self, key: Key, sync: _Sync, state: SyncState) -> None:
        """Events for what changed since the last look at this sync's state."""
        if state.reconciles > sync.seen_reconciles:
            sync.seen_reconciles = state.reconciles
            if state.reason == Reason.SUCCEEDED and state.summary:
                note = f"revision {state.last_applied_revision}: {state.summary}"
                self._event(key, "Applied", "Normal", "Apply", note)
            elif state.reason not in (None, Reason.SUCCEEDED, Reason.PROGRESSING):
                note = f"{state.reason}: {state.message}"
                self._event(key, str(state.reason), "Warning", "Reconcile", note)
            if state.pruned:
                note = f"revision {state.last_attempted_revision}: {state.pruned} objects pruned"
                self._event(key, "Pruned", "Normal", "Prune", note)
        if state.heals > sync.seen_heals:
            healed, sync.seen_heals = state.heals - sync.seen_heals, state.heals
            note = f"{healed} drifted objects re-applied; last: {state.last_healed}"
            self._event(key, "Healed", "Normal", "Heal", note, count=healed)

    def _event(
        self, key: Key, reason: str, kind: str, action: str, note: str, *, count: int = 1
    ) -> None:
        pending = self._events.get((key, reason))
        if pending is None:
            pending = self._events[(key, reason)] = _Pending(kind, action, note)
        pending.type, pending.action, pending.note = kind, action, note
        if not pending.count:
            pending.first = _micro_now()
        pending.count += count
        self._mark(key)

    def _events_due(self) -> bool:
        now = self.clock()
        return any(
            p.count and (p.last_sent is None or now - p.last_sent >= self.event_window_s)
            for p in self._events.values()
        )

    def _next_event_in(self) -> float:
        """Seconds until the first counted Event's window ends (a window if none waits)."""
        now = self.clock()
        waits = [
            p.last_sent + self.event_window_s - now
            for p in self._events.values()
            if p.count and p.last_sent is not None
        ]
        return max(min(waits, default=self.event_window_s), 0.0)

    async def _send_events(self) -> None:
        now = self.clock()
        for (key, reason), pending in list(self._events.items()):
            if not pending.count:
                continue
            if pending.last_sent is not None and now - pending.last_sent < self.event_window_s:
                continue  # within the window: counted, sent when it ends
            count, first = pending.count, pending.first
            pending.count, pending.last_sent = 0, now
            try:
                await self._send_event(
                    key,
                    reason,
                    pending.type,
                    pending.action,
                    pending.note,
                    count=count,
                    first=first,
                )
            except AioreconcileError as e:
                logger.info(
                    "could not record an Event: %s", e, extra={"reason": reason, "error": str(e)}
                )

    async def _send_event(
        self,
        key: Key,
        reason: str,
        kind: str,
        action: str,
        note: str,
        *,
        count: int,
        first: str | None,
    ) -> None:
        event: JsonObject = {
            "reason": reason,
            "type": kind,
            "action": action,
            "note": redact_text(note)[:_NOTE_MAX],
            "eventTime": first or _micro_now(),
        }
        if count > 1:
            event["series"] = {"count": count, "lastObservedTime": _micro_now()}
        await self.client.record_event(key[0], key[1], event)
        self.events_sent.labels(reason=reason).inc()


def _signature(obj: JsonObject) -> tuple[object, ...]:
    """What of a Sync object we act on; a change elsewhere (status) is not ours to act on."""
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    return (
        metadata.get("generation"),
        annotations.get(REQUESTED_AT_ANNOTATION),
        tuple(sorted((metadata.get("labels") or {}).items())),
        bool(metadata.get("deletionTimestamp")),
        FINALIZER in (metadata.get("finalizers") or []),
    )


@dataclass
class _Receiver:
    generation: int = 0
    secret: str = ""  # the name of its Secret
    written: JsonObject | None = None


@dataclass
class ReceiverResources:
    """Serves each Receiver object at its derived path (``/hooks/<sha256>``) and writes the
    path and a Ready condition into its status. Its token is read from its Secret when the
    Receiver or that Secret changes (``on_secret``), so a rotated token moves the path at once.
    A Receiver without its Secret, or with a spec the model refuses, is not served.

    Every replica runs one (a standby serves the paths too, ``reactor.requesting``); only the
    one for which ``writes`` is true writes the status, and ``write_all`` makes a replica that
    has just become the writer look at every Receiver again."""

    client: SyncResourceClient
    routes: ReceiverRoutes
    registry: Registry
    writes: Callable[[], bool] = lambda: True
    _latest: dict[Key, JsonObject | None] = field(default_factory=dict)
    _known: dict[Key, _Receiver] = field(default_factory=dict)
    queue: WorkQueue[Key] = field(init=False)

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self._process, registry=self.registry, name="receivers")

    def on_event(self, event: WatchEvent) -> None:
        key = (event.ref.namespace, event.ref.name)
        body = None if event.type is EventType.DELETED else event.object
        self._latest[key] = body
        known = self._known.get(key)
        generation = ((body or {}).get("metadata") or {}).get("generation")
        if body is None or known is None or known.generation != generation:
            self.queue.put(key)  # a status write of ours keeps the generation: ignored

    def on_secret(self, namespace: str, name: str) -> None:
        for key, known in self._known.items():
            if key[0] == namespace and known.secret == name:
                self.queue.put(key)

    def write_all(self) -> None:
        for key in self._latest:
            self.queue.put(key)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self.queue.run(task_status=task_status)

    async def _process(self, key: Key) -> None:
        namespace, name = key
        route = f"{namespace}/{name}"
        obj = self._latest.get(key)
        if obj is None:
            self.routes.stop(route)
            self._known.pop(key, None)
            self._latest.pop(key, None)
            return
        known = self._known.setdefault(key, _Receiver(written=obj.get("status") or None))
        known.generation = int((obj.get("metadata") or {}).get("generation") or 0)
        secret_ref = (obj.get("spec") or {}).get("secretRef") or {}
        known.secret = str(secret_ref.get("name") or "")
        data = await self.client.read_data(DataRef("Secret", namespace, known.secret))
        token = (data or {}).get("token")
        path: str | None = None
        problem: str | None = None
        if not token:
            reason = "SecretNotFound"
            problem = f"the Secret {namespace}/{known.secret} has no token: not served"
        else:
            try:
                spec = receiver_from_resource(obj, token=token.decode("utf-8", "replace"))
            except ConfigError as e:
                reason, problem = "InvalidSpec", str(e)
            else:
                reason, path = "Succeeded", f"{WEBHOOK_PATH_PREFIX}{spec.name}"
                self.routes.serve(route, spec, token)
                logger.info("receiver served", extra={"receiver": route, "path": path})
        if problem is not None:
            self.routes.stop(route)
            logger.warning("receiver not served", extra={"receiver": route, "error": problem})
        status = receiver_status(
            generation=known.generation,
            path=path,
            problem=problem,
            reason=reason,
            previous=known.written,
            now=_now(),
        )
        if self.writes() and status_changed(known.written, status):
            await self.client.write_receiver_status(namespace, name, status)
            known.written = status


__all__ = ["EVENT_WINDOW_S", "STATUS_PERIOD_S", "ReceiverResources", "SyncResources"]
