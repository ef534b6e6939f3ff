"""The controller: triggers in, reconciles out, one lane per key.

Three kinds of work share one queue. ``("sync", name)`` reconciles a whole sync: fetch the
ref's head as the Git server holds it (a push's SHA is only a hint: Flux and Argo CD treat a
webhook as "look now" too), render, apply, prune. ``("object", sync, ref)`` heals one drifted
object alone. ``("health", name)`` re-reads the objects of a ``wait: true`` sync that were not
yet healthy after its apply, one short round at a time, until they are or its ``timeout``
passed: a sync that waits holds no lane and no slot of the queue meanwhile, so heals, other
syncs and a newer commit of the same sync go on (a newer commit supersedes the wait, as Flux's
health-check cancellation on a new revision). Keys coalesce, so ten edits of one object while
it waits become one heal; a push arriving while its sync runs makes exactly one more run.

Heals and whole-sync work have separate limits on the queue (``heal_concurrency`` beside
``concurrency``): one foreign write over a thousand managed objects (a ``kubectl label
--overwrite`` of a namespace, a mutating webhook rolled out) makes a thousand heals due at once,
and under one FIFO limit a push arriving just after would wait for all of them. Argo CD splits
its workers the same way (status vs operation processors). The apiserver is shared too, and on
it a storm's heals would take as many requests as the push's apply: so while any sync writes,
and while a push is on its way to writing (its fetch and render, for at most ``PUSH_AHEAD_S``:
``_ahead_of_heals``), heals keep at most ``HEALS_BESIDE_WRITES`` slots, and their full limit
comes back when the last of those is done (pushes first, as the apiserver's Priority and
Fairness serves a higher priority level from its own seats). Heals are never stopped: a storm
during a long start-up still heals.
Their limit is 32 by default: a heal is one request, and against a foreign writer with 32
requests in flight (bench.scale's storm), 16 heals got a third of the apiserver and healed 1,000
objects in 8.3-12.8 s, 32 in 5.4-11.7 s, 64 in 6.8-11.3 s (2 shared cores, load 5-8; 8: 10.6-13.2
s); the total CPU per storm was the same, so a larger limit buys the heals a larger share, not
less work (docs/controller-benchmarks.md).

The desired state of every sync is kept as deflated JSON per object (``_compact``), beside
what the server stored for our fields (``planning.as_stored`` of our own apply's response,
taken as each response arrives, ``ApplyOptions.on_live``, so the responses are not all held
until the apply ends) and the resourceVersion of our own last write, so a watch event is
judged purely (``engine.drift.judge``) in microseconds, on stored values (``cpu: 1`` is stored
as ``"1"``), and our own writes are never taken for drift.

A heal is one request: the server-side apply. The object it judges is the one the newest watch
event showed (``_observed``, kept only while its heal is queued), not a GET: a storm of 1,000
heals made 1,000 GETs besides the applies. controller-runtime reconciles from its informer cache
and Argo CD's self-heal diffs against its live-state cache for the same reason; an apply needs no
precondition, so a stale event costs an apply that changes nothing (``_heal_one``).

Heals never race their sync. A reconcile that is about to write waits for the heals of its
sync already running, and while it writes, heals and events of its objects are set aside and
re-checked once it has recorded what it stored; so a heal never writes an older commit's
content after a newer one (kopf serialises all handling of one object the same way).

Watches can miss an event (a connection that stalled, a bug, an event dropped on the way), so
every poll that finds the ref unmoved also lists the sync's objects by label and judges those
that are missing or not as we last wrote them (``_verify_live``): a missed drift is healed
within one interval.

A push costs one fetch per repository, and only the syncs it touched. Each trigger notes when it
arrived; the syncs one delivery triggers take the head of the first fetch of their repository and
ref that started after that (``GitSource.fetch(not_before=...)``), then proceed in parallel, each
in its own lane (no repository lock is held past the fetch and the checkout). A sync whose
inputs did not change between the commit its objects come from and the new head
(``engine.changes.judge`` on ``git diff --name-only``) records the head as applied without
rendering or writing anything; one whose last reconcile did not succeed, or that has no desired
state yet (a fresh start), always renders and applies in full. One that is affected renders in
full but plans only the documents whose rendered form changed and the objects its watch saw
drift since (``_plan_changes_only``), and writes those it knows as it left them without reading
them first (``_as_left``).
"""

import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
import orjson

from aioreconcile.engine import changes, health
from aioreconcile.engine.applying import ApplyOptions
from aioreconcile.engine.changeset import Action, ChangeSetEntry
from aioreconcile.engine.config import SyncSpec
from aioreconcile.engine.drift import DriftKind, DriftVerdict, FightGuard, judge
from aioreconcile.engine.errors import AioreconcileError, SourcePathMissing, VerificationError
from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.manifests import KnownDocuments, known_documents
from aioreconcile.engine.metrics import Counter, Gauge, Histogram, Registry
from aioreconcile.engine.model import JsonObject, Manifest, ObjectRef, deflated, inflated
from aioreconcile.engine.naming import SYNC_LABEL, TRACEPARENT_ANNOTATION
from aioreconcile.engine.outcomes import Reason, SyncOutcome
from aioreconcile.engine.planning import as_stored, our_fields, refusal, stamp
from aioreconcile.engine.redaction import printable, redact_text, redact_url
from aioreconcile.engine.relisting import tombstone
from aioreconcile.engine.triggers import Push
from aioreconcile.reactor.ports import Cluster, GitSource, InventoryStore, ManifestRenderer, Watcher
from aioreconcile.reactor.queueing import Backoff, WorkQueue
from aioreconcile.reactor.syncing import (
    HEALTH_POLL_S,
    NotReady,
    SyncRequest,
    not_ready_message,
    recheck_health,
    sync_once,
)
from aioreconcile.reactor.tracing import (
    AttributeValue,
    CommitInfo,
    NoTracing,
    SpanScope,
    Tracing,
)

logger = logging.getLogger(__name__)

SyncKey = tuple[str, str]
ObjectKey = tuple[str, str, ObjectRef]
WorkKey = SyncKey | ObjectKey

# Retried with backoff when the outcome is transient. HealthCheckFailed is not: the objects
# were applied, waiting longer is what the timeout was for; the next poll or push applies and
# judges them again (Flux retries a failed health check at the next interval, too). A render
# is transient only when the apiserver could not be reached for discovery, never for a broken
# source.
_RETRIED: Final = frozenset(
    {
        Reason.FETCH_FAILED,
        Reason.RENDER_FAILED,
        Reason.APPLY_FAILED,
        Reason.PRUNE_FAILED,
        Reason.INVENTORY_FAILED,
    }
)
_POLL_JITTER: Final = 0.1
_HEALS: Final = "heals"  # the queue's pool of ("object", ...) keys
# Heals in flight while any sync writes or a push is on its way to writing (module docstring).
HEALS_BESIDE_WRITES: Final = 2
# How long a push holds the heals to ``HEALS_BESIDE_WRITES`` before it writes (its fetch,
# checkout and render), at most: a hung Git server must not slow a storm's heals for longer.
PUSH_AHEAD_S: Final = 1.0
_WATCH_SYNC_TIMEOUT_S: Final = 30.0
# Watch events' objects kept for the heals they queued (``Controller._observed``), at most: ~8-10
# KB each as parsed JSON (a realistic ConfigMap, managedFields included), so ~20 MiB at most
# during a storm; past it a heal reads the object (a GET) as it did before.
OBSERVED_LIMIT: Final = 2048
# ``after_reconcile`` (run: a full gc and malloc_trim, which hold the event loop) waits for the
# last work under way (reconciles, heals, health rounds) to end, but at most this long.
_RELEASE_EVERY_S: Final = 10.0


class RetryLater(AioreconcileError):
    """Raised by a work item to make the queue retry it with backoff."""


# Seconds per stage of the reconcile running in this task (``"reconciled"`` log line).
_STAGES: ContextVar[dict[str, float] | None] = ContextVar("aioreconcile_stages", default=None)


class _TimedTracing:
    """The Tracing port, timing each stage of the reconcile under way for its log line, so
    a push's stages can be read without a trace backend (bench.push reads them)."""

    def __init__(self, inner: Tracing) -> None:
        self._inner = inner

    def commit(self, info: CommitInfo) -> AbstractContextManager[SpanScope]:
        return self._inner.commit(info)

    @contextmanager
    def stage(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> Iterator[SpanScope]:
        started = time.perf_counter()
        try:
            with self._inner.stage(name, attributes) as span:
                yield span
        finally:
            stages = _STAGES.get()
            if stages is not None:
                stages[name] = stages.get(name, 0.0) + time.perf_counter() - started

    def objects(self, entries: Sequence[ChangeSetEntry], *, operation: str) -> None:
        self._inner.objects(entries, operation=operation)

    def heal(
        self,
        *,
        sync: str,
        ref: ObjectRef,
        revision: str,
        repository_url: str,
        link_traceparent: str | None,
        writers: Sequence[str],
        fields: Sequence[str],
    ) -> AbstractContextManager[SpanScope]:
        return self._inner.heal(
            sync=sync,
            ref=ref,
            revision=revision,
            repository_url=repository_url,
            link_traceparent=link_traceparent,
            writers=writers,
            fields=fields,
        )


@dataclass
class HealthWait:
    """A ``wait: true`` sync's objects not yet healthy after the apply of ``revision``."""

    revision: str
    deadline: float  # on the controller's clock
    timeout_s: float
    started: float  # time.monotonic() the reconcile began, for its duration
    waiting: NotReady


@dataclass
class SyncState:
    """What a sync did last, and what it wants now (the /status view reads it)."""

    spec: SyncSpec
    last_applied_revision: str | None = None
    last_attempted_revision: str | None = None
    reason: str | None = None
    message: str = ""
    last_error: str | None = None
    inventory_size: int | None = None
    heals: int = 0
    drifts_detected: int = 0
    drifts_reported: int = 0
    fight_pauses: int = 0  # heals refused by the FightGuard
    reconciles: int = 0
    last_reconcile_at: float | None = None
    pending_hint: str | None = None  # the SHA the last push named: for logs and traces only
    pending_traceparent: str | None = None  # the reconcile's parent: a sender's trace only
    pending_link: str | None = None  # the webhook request the reconcile links to otherwise
    pending_received_at: float | None = None
    # time.monotonic() of the newest trigger not yet looked at: a fetch that started after it
    # may answer for this sync (GitSource.fetch(not_before=...)).
    trigger_at: float | None = None
    revision: str | None = None  # the revision the desired objects below belong to
    desired: dict[ObjectRef, bytes] = field(default_factory=dict)  # stamped, orjson-encoded
    rewind_counted: tuple[str, str] | None = None  # (from, to) of the last rewind counted
    # Our fields as the server stored them after our last write (planning.as_stored), orjson.
    stored: dict[ObjectRef, bytes] = field(default_factory=dict)
    written: dict[ObjectRef, str] = field(default_factory=dict)  # resourceVersion of our write
    # blake2b-128 of each rendered document (unstamped), as last rendered: a push plans only
    # the documents whose digest changed (``_plan_changes_only``). ~90 B per object.
    digests: dict[ObjectRef, bytes] = field(default_factory=dict)
    # The same render's documents by the digest of their text (``KnownDocuments``): a push
    # parses only the documents whose text changed. 86-119 B per object, no bodies.
    known: KnownDocuments | None = None
    # Objects a watch event showed drifted or deleted (or changed while we wrote) since a
    # reconcile last planned them, each with the resourceVersion of our last write then: the
    # next push plans them whatever their document, unless we wrote them since (a heal).
    suspects: dict[ObjectRef, str | None] = field(default_factory=dict)
    watch_synced: bool = False  # the last reconcile's wait for the watches ended synced
    health: HealthWait | None = None  # a health check under way (``wait: true``)
    writing: bool = False  # a reconcile is writing: heals and events wait (Controller._writing)
    heals_running: int = 0
    heals_idle: anyio.Event | None = None  # set when heals_running drops to 0
    # Objects that changed (ref -> resourceVersion, "" for a deletion) while a reconcile wrote.
    deferred: dict[ObjectRef, str] = field(default_factory=dict)
    # (sha, path) of a commit that lacks the sync's path: a commit never changes, so it is
    # reported once and not looked at again until another commit arrives.
    missing_path: tuple[str, str] | None = None
    summary: str = ""  # the last reconcile's changes ("2 created, 1 configured"), for Events
    pruned: int = 0  # objects the last reconcile pruned
    last_healed: str = ""  # the last object healed and who changed it, for Events
    spec_changed: bool = False  # SpecChanged: reconcile even if the head is already applied
    reconciling: bool = False  # a ("sync", name) work item is running (``remove`` waits)
    idle: anyio.Event | None = None  # set when it ends, or the last heal ends (``remove``)

    def view(self) -> dict[str, object]:
        return {
            "name": self.spec.name,
            "url": redact_url(self.spec.source.url),
            "ref": printable(self.spec.source.ref),
            "suspended": self.spec.suspend,
            "lastAppliedRevision": self.last_applied_revision,
            "lastAttemptedRevision": self.last_attempted_revision,
            "reason": self.reason,
            "message": redact_text(self.message),
            "lastError": redact_text(self.last_error) if self.last_error else None,
            "inventorySize": self.inventory_size,
            "objects": len(self.desired),
            "driftHeals": self.heals,
            "changes": self.summary,
            "driftDetected": self.drifts_detected,
            "driftReported": self.drifts_reported,
            "driftFightPauses": self.fight_pauses,
            "reconciles": self.reconciles,
        }


class _Metrics:
    def __init__(self, registry: Registry) -> None:
        self.reconciles = Counter(
            "aioreconcile_reconcile_total",
            "Sync reconciles by result reason.",
            ["sync", "reason"],
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            "aioreconcile_reconcile_duration_seconds",
            "Time to reconcile a whole sync.",
            ["sync"],
            registry=registry,
        )
        self.drifts = Counter(
            "aioreconcile_drift_detected_total",
            "Managed objects changed or deleted by others.",
            ["sync", "kind"],
            registry=registry,
        )
        self.heals = Counter(
            "aioreconcile_drift_heals_total",
            "Drifted objects re-applied.",
            ["sync", "result"],
            registry=registry,
        )
        self.fights = Counter(
            "aioreconcile_drift_fights_total",
            "Heals refused because another writer keeps changing the object.",
            ["sync"],
            registry=registry,
        )
        self.rewinds = Counter(
            "aioreconcile_ref_rewinds_total",
            "Heads followed that do not build on the last applied commit (force push, rollback).",
            ["sync"],
            registry=registry,
        )
        self.hints = Counter(
            "aioreconcile_push_hints_total",
            "Pushes looked at, by whether the SHA they named was the ref's head when fetched.",
            ["sync", "hint"],
            registry=registry,
        )
        self.objects = Gauge(
            "aioreconcile_managed_objects",
            "Objects each sync declares.",
            ["sync"],
            registry=registry,
        )


class Controller:
    """Reconciles syncs on pushes and polls, and heals drifted objects one by one."""

    def __init__(
        self,
        syncs: Sequence[SyncSpec],
        *,
        cluster: Cluster,
        clusters: Mapping[str, Cluster] | None = None,
        render: ManifestRenderer,
        sources: Mapping[str, GitSource],
        inventories: Mapping[str, InventoryStore],
        watcher: Watcher,
        registry: Registry,
        concurrency: int = 16,
        heal_concurrency: int = 32,
        apply_concurrency: int = 16,
        clock: Callable[[], float] = time.monotonic,
        drift_debounce_s: float = 0.02,
        tracing: Tracing | None = None,
        after_reconcile: Callable[[], None] | None = None,
        on_change: Callable[[SyncState], None] | None = None,
        retry: Backoff | None = None,  # how failed work is retried (run --max-retry-delay)
    ) -> None:
        self._cluster = cluster
        # Per sync, the cluster as its service account (impersonated); others use ``cluster``.
        self._clusters = dict(clusters or {})
        self._render = render
        self._sources = dict(sources)
        self._inventories = dict(inventories)
        self._watcher = watcher
        self._clock = clock
        self._apply_concurrency = apply_concurrency
        self._heal_concurrency = heal_concurrency
        self._writers = 0  # reconciles inside ``_writing``: heals yield to them
        self._pushes_ahead = 0  # pushes on their way to writing: heals yield to them too
        self._drift_debounce_s = drift_debounce_s
        self._tracing: Tracing = _TimedTracing(tracing or NoTracing())
        self._after_reconcile = after_reconcile
        self._release_pending = False
        self._release_asked_at = clock()
        self._reconciling = 0  # ("sync", name) work items running now
        # Told after every recorded result and heal (CRD mode writes the Sync's status).
        self._on_change = on_change
        self.states = {spec.name: SyncState(spec) for spec in syncs}
        self._pollers: dict[str, anyio.CancelScope] = {}
        self._running: dict[str, set[anyio.CancelScope]] = {}  # per sync, its work under way
        self._tasks: anyio.abc.TaskGroup | None = None
        self._owners: dict[ObjectRef, str] = {}  # which sync declares each object
        # The newest watch event's object of each object whose heal is queued (``_heal_one``).
        self._observed: dict[ObjectKey, JsonObject] = {}
        self._fights = FightGuard()
        self._metrics = _Metrics(registry)
        # Heals have their own limit beside the syncs' (see the module docstring).
        self.queue: WorkQueue[WorkKey] = WorkQueue(
            self._process,
            concurrency=concurrency,
            registry=registry,
            name="controller",
            backoff=retry or Backoff(),
            pools={_HEALS: heal_concurrency},
            pool_of=_pool_of,
        )
        self.ready = anyio.Event()

    # --- triggers ------------------------------------------------------------------------------

    def push(self, push: Push) -> None:
        """A webhook said a sync's ref moved: look at the ref as soon as possible. The SHA it
        named is kept as a hint for logs and traces; what is applied is the ref's head."""
        state = self.states.get(push.sync)
        if state is None:
            return
        state.pending_hint = push.sha
        state.pending_traceparent = push.event.traceparent if push.event else None
        state.pending_link = push.event.link_traceparent if push.event else None
        state.pending_received_at = time.time()
        state.trigger_at = time.monotonic()
        self.queue.put(("sync", push.sync))

    def poll(self, sync: str) -> None:
        state = self.states.get(sync)
        if state is not None:
            state.trigger_at = time.monotonic()
        self.queue.put(("sync", sync))

    def on_watch_event(self, event: WatchEvent) -> None:
        """Judge a watch event purely; enqueue a heal when a declared field drifted.

        Called by every watch: an exception escaping here would stop all of them, so one bad
        object is logged and skipped instead."""
        try:
            self._judge(event)
        except Exception:
            logger.exception("could not judge a watch event", extra={"object": str(event.ref)})

    def _judge(self, event: WatchEvent) -> None:
        state = self._owner_of(event)
        if state is None:
            return
        deleted = event.type is EventType.DELETED
        if state.writing:
            # Judged once the reconcile has recorded what it stored (see ``_writing``).
            state.deferred[event.ref] = "" if deleted else event.resource_version
            return
        key: ObjectKey = ("object", state.spec.name, event.ref)
        if key in self._observed:
            self._observe(key, event)  # its heal is queued: it takes the newest state
        desired = _decoded(state.desired.get(event.ref))
        verdict = judge(
            event,
            desired,
            stored=_decoded(state.stored.get(event.ref)),
            our_resource_version=state.written.get(event.ref),
        )
        if verdict.drifted or (
            desired is not None and refusal(desired, event.object, sync=state.spec.name) is not None
        ):
            # Unless a heal writes it after this, the next push reads and plans it again; so
            # it does for one now opted out or labelled as another sync's (``judge`` leaves
            # those alone, and a heal would refuse them).
            state.suspects[event.ref] = state.written.get(event.ref)
        if self._reported(state, event.ref, verdict):
            self._observe(key, event)
            # A short debounce: a burst of edits to one object (a script, an operator's
            # retries) coalesces into one heal instead of racing it edit by edit.
            self.queue.put(key, delay_s=self._drift_debounce_s)

    def _observe(self, key: ObjectKey, event: WatchEvent) -> None:
        """Keep the event's object for the queued heal of ``key`` (``_heal_one``), replacing an
        older one; a deletion is not kept: the heal reads the object, to tell an object deleted
        from one that lost our labels (another sync may have taken it over)."""
        if event.type is EventType.DELETED:
            self._observed.pop(key, None)
        elif key in self._observed or len(self._observed) < OBSERVED_LIMIT:
            self._observed[key] = event.object

    def _owner_of(self, event: WatchEvent) -> SyncState | None:
        """The sync that declares the object: the one its label names if that one declares it,
        else the one our index knows, so an object stripped of our labels is still judged."""
        labels = (event.object.get("metadata") or {}).get("labels") or {}
        named = self.states.get(str(labels.get(SYNC_LABEL, "")))
        if named is not None and event.ref in named.desired:
            return named
        owner = self._owners.get(event.ref)
        return self.states.get(owner) if owner is not None else None

    def _reported(self, state: SyncState, ref: ObjectRef, verdict: DriftVerdict) -> bool:
        """Count and log a drift; whether to heal it (``selfHeal``)."""
        if not verdict.drifted:
            return False
        state.drifts_detected += 1
        self._metrics.drifts.labels(sync=state.spec.name, kind=verdict.kind.value).inc()
        if not state.spec.self_heal:
            state.drifts_reported += 1
            logger.warning(
                "drift not healed (selfHeal: false)",
                extra={"sync": state.spec.name, "object": str(ref), "reason": verdict.reason},
            )
            return False
        logger.info(
            "drift detected",
            extra={"sync": state.spec.name, "object": str(ref), "reason": verdict.reason},
        )
        return True

    # --- running -------------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the queue and one poller per sync until cancelled."""
        async with anyio.create_task_group() as tasks:
            await tasks.start(self.queue.run)
            self._tasks = tasks
            for state in self.states.values():
                self._start_poller(state.spec)
            task_status.started()
            self.ready.set()

    def _start_poller(self, spec: SyncSpec) -> None:
        if self._tasks is None or spec.suspend:
            return
        scope = anyio.CancelScope()
        self._pollers[spec.name] = scope
        self._tasks.start_soon(self._poll_forever, spec.name, spec.source.interval_s, scope)

    async def _poll_forever(self, name: str, interval_s: float, scope: anyio.CancelScope) -> None:
        """Reconcile at start, then every interval (jittered so syncs do not poll in step)."""
        with scope:
            while True:
                self.poll(name)
                jitter = 1 + _POLL_JITTER * (2 * random.random() - 1)
                await anyio.sleep(interval_s * jitter)

    # --- the registry of syncs (CRD mode adds, edits and deletes them live) ----------------------

    def upsert(
        self,
        spec: SyncSpec,
        *,
        source: GitSource,
        inventory: InventoryStore | None,
        cluster: Cluster | None = None,
    ) -> None:
        """Add a sync or change one: a SpecChanged trigger. The new spec takes effect at its
        next reconcile, enqueued now, which applies the head even if that commit is already
        applied (a new path or render options give other objects). What the sync applied is
        kept, so its next apply prunes what the new spec no longer declares."""
        name = spec.name
        state = self.states.get(name)
        if state is not None and state.spec == spec:
            return
        if state is not None and replace(state.spec, labels=spec.labels) == spec:
            state.spec = spec  # only who may trigger it changed (a Receiver's selector)
            return
        if state is None:
            state = self.states[name] = SyncState(spec)
        else:
            state.spec = spec
            state.spec_changed = True
            state.health = None  # a wait for the old spec's objects no longer decides
            if not spec.suspend:
                # Not Ready until the new spec is applied (what dependsOn and status read).
                state.reason, state.message = None, ""
        self._sources[name] = source
        if inventory is not None:
            self._inventories[name] = inventory
        if cluster is not None:
            self._clusters[name] = cluster
        else:
            self._clusters.pop(name, None)
        poller = self._pollers.pop(name, None)
        if poller is not None:
            poller.cancel()
        self._start_poller(spec)  # polls at once (unless suspended)
        logger.info("sync spec changed", extra={"sync": name, "suspended": spec.suspend})

    def request(self, name: str, *, hint: str | None = None, link: str | None = None) -> None:
        """Reconcile now as if the spec had changed (a ``requestedAt`` annotation): the head
        is applied again even if it is already applied. ``hint``: the commit a webhook named
        when another replica recorded it on the Sync, kept as ``push`` keeps its SHA; ``link``:
        that webhook request's span, which the reconcile's trace links to."""
        state = self.states.get(name)
        if state is not None and not state.spec.suspend:
            state.spec_changed = True
            if hint is not None:
                state.pending_hint = hint
                state.pending_link = link
                state.pending_received_at = time.time()
                state.trigger_at = time.monotonic()
            self.queue.put(("sync", name))

    async def remove(self, name: str) -> SyncState | None:
        """Forget a sync; return its last state once no reconcile or heal of it runs any more
        (a reconcile under way finishes its writes first), so the caller may prune or release
        what it applied without racing it."""
        state = self.states.pop(name, None)
        poller = self._pollers.pop(name, None)
        if poller is not None:
            poller.cancel()
        if state is None:
            return None
        while state.reconciling or state.heals_running:
            # Its own event: ``heals_idle`` belongs to a reconcile's ``_writing``.
            state.idle = anyio.Event()
            await state.idle.wait()
        # Added again while we waited (its shard regained, the Sync recreated): the new
        # registration keeps its source, inventory and cluster, and what it declares.
        again = self.states.get(name)
        self._index(name, state.desired, again.desired if again is not None else {})
        if again is None:
            self._sources.pop(name, None)
            self._inventories.pop(name, None)
            self._clusters.pop(name, None)
        self._watch_all()
        return state

    async def abandon(self, name: str) -> SyncState | None:
        """Forget a sync at once: its reconcile or heals under way are cancelled (mid-request
        if need be), and this returns once they have ended. For a sync this replica may no
        longer write for (its shard's Lease was lost or given back); unlike ``remove``, nothing
        is let finish."""
        for scope in self._running.get(name, ()):
            scope.cancel()
        return await self.remove(name)

    def _require_dependencies(self, state: SyncState) -> None:
        """``dependsOn``: every named sync last applied its head successfully. Otherwise the
        sync is not Ready with DependencyNotReady and retried with backoff (Flux requeues a
        Kustomization whose dependency is not ready the same way)."""
        waiting = [
            name
            for name in state.spec.depends_on
            if (other := self.states.get(name)) is None or other.reason != Reason.SUCCEEDED
        ]
        if not waiting:
            return
        message = f"dependencies not ready: {', '.join(waiting)}"
        if state.reason != Reason.DEPENDENCY_NOT_READY or state.message != message:
            self._record_failure(state, Reason.DEPENDENCY_NOT_READY, message)
        raise RetryLater(message)

    async def drain(self, *, timeout_s: float) -> bool:
        return await self.queue.drain(timeout_s=timeout_s)

    def status(self) -> list[dict[str, object]]:
        return [state.view() for state in self.states.values()]

    def _cluster_for(self, sync: str) -> Cluster:
        return self._clusters.get(sync, self._cluster)

    def _inventory_key(self, sync: str) -> str | None:
        """What the sync's objects are stamped with (``INVENTORY_ANNOTATION``): a heal must
        write the same stamp as the reconcile, or its apply would take the annotation away."""
        store = self._inventories.get(sync)
        return store.key if store is not None else None

    async def _process(self, key: WorkKey) -> None:
        scope = anyio.CancelScope()
        running = self._running.setdefault(key[1], set())
        running.add(scope)
        try:
            with scope:
                await self._process_one(key)
        finally:
            running.discard(scope)
            if not running:
                self._running.pop(key[1], None)
            if self._release_due(key):
                self._release()  # the last work under way has ended

    async def _process_one(self, key: WorkKey) -> None:
        if key[0] == "sync":
            state = self.states.get(key[1])
            if state is None or state.spec.suspend:
                return  # removed or suspended meanwhile
            state.reconciling = True
            self._reconciling += 1
            try:
                self._require_dependencies(state)
                pushed = state.pending_hint is not None  # a webhook's (or a handoff's) push
                with self._ahead_of_heals() if pushed else nullcontext():
                    await self._reconcile(key[1])
            finally:
                state.reconciling = False
                self._reconciling -= 1
                if state.idle is not None:
                    state.idle.set()
        elif key[0] == "health":
            await self._check_health(key[1])
        else:
            _, sync, ref = key  # type: ignore[misc]
            await self._heal(sync, ref)

    # --- whole-sync reconcile ------------------------------------------------------------------

    async def _reconcile(self, name: str) -> None:
        """Look at the sync's ref and apply its head if it is new.

        The head is settled (a poll's ``ls-remote``, then a fetch of the ref itself) before the
        commit's trace opens: a push that finds the head already applied (a replay, a
        redelivery) changes nothing and leaves no trace that ``aioreconcile trace`` could take
        for the commit's deployment."""
        state = self.states.get(name)
        if state is None or state.spec.suspend:
            return
        spec = state.spec
        source = self._sources[name]
        hint, state.pending_hint = state.pending_hint, None
        parent, state.pending_traceparent = state.pending_traceparent, None
        link, state.pending_link = state.pending_link, None
        received_at, state.pending_received_at = state.pending_received_at, None
        not_before, state.trigger_at = state.trigger_at, None
        started = time.monotonic()
        stages: dict[str, float] = {}
        if received_at is not None:
            stages["queue wait"] = max(0.0, time.time() - received_at)
        _STAGES.set(stages)  # this lane's task: its reconcile's stages only
        try:
            if hint is None and _may_be_up_to_date(state):
                resolve_started = time.monotonic()
                head = await source.resolve()
                stages["ref resolve"] = time.monotonic() - resolve_started
                if _up_to_date(state, head):
                    # A poll, nothing new in Git: is the cluster still as we left it? (It
                    # reports its own errors; none escapes to be taken for a fetch failure.)
                    await self._verify_live(state)
                    return
            fetch_started = time.monotonic()
            sha = await self._fetch_head(state, hint=hint, not_before=not_before)
            fetch_seconds = time.monotonic() - fetch_started
            stages["ref fetch"] = fetch_seconds
            if _up_to_date(state, sha):
                return
            rewound = await self._rewound(state, sha)
        except AioreconcileError as e:
            self._record_failure(state, Reason.FETCH_FAILED, str(e))
            raise RetryLater(str(e)) from e
        state.health = None  # a newer commit supersedes a wait for an older one
        state.last_attempted_revision = sha
        info = CommitInfo(
            sync=name,
            repository_url=spec.source.url,
            ref=spec.source.ref,
            ref_type=_ref_type(spec.source.ref),
            sha=sha,
            trigger="push" if hint is not None else "poll",
            parent_traceparent=parent,
            link_traceparent=link,
            started_at=received_at,
        )

        async def reconcile_commit() -> SyncOutcome | None:
            with self._tracing.commit(info) as root:
                root.set_attributes(
                    {"aioreconcile.git.fetch_seconds": round(fetch_seconds, 6)}
                    | ({"aioreconcile.push.hinted_revision": hint} if hint is not None else {})
                    | ({"aioreconcile.ref.rewound": True} if rewound else {})
                )
                return await self._reconcile_commit(state, sha, root, started=started)

        rendered = _skippable(state)
        if rendered is None or rendered == sha:
            outcome = await reconcile_commit()
        else:
            outcome = await self._with_diff_ahead(name, rendered, sha, reconcile_commit)
        if outcome is not None and outcome.reason in _RETRIED and outcome.transient:
            raise RetryLater(outcome.message)

    async def _fetch_head(
        self, state: SyncState, *, hint: str | None, not_before: float | None
    ) -> str:
        """Fetch the ref itself and return its head; never the hinted SHA. A push whose SHA was
        not the head is counted (a replay, a forged or an overtaken delivery) and logged.
        Another sync's fetch of the same ref that started after our trigger may answer."""
        name = state.spec.name
        sha = await self._sources[name].fetch(not_before=not_before)
        if hint is not None:
            verdict = "head" if hint.lower() == sha else "not-head"
            self._metrics.hints.labels(sync=name, hint=verdict).inc()
            if verdict == "not-head":
                logger.info(
                    "the pushed SHA is not the ref's head: applying the head",
                    extra={"sync": name, "hinted": hint, "revision": sha},
                )
        return sha

    async def _with_diff_ahead(
        self,
        name: str,
        rendered: str,
        sha: str,
        reconcile_commit: Callable[[], Awaitable[SyncOutcome | None]],
    ) -> SyncOutcome | None:
        """``reconcile_commit()``, with the diff ``_unchanged`` will judge asked of the source
        meanwhile, while the head is verified and laid out: two git processes side by side
        instead of one after the other (the source answers the later call with this one's
        answer, or waits for it). Its errors are ``_unchanged``'s to report, when it asks
        again; ``reconcile_commit``'s are raised as they are, not in an exception group."""

        async def diff_ahead() -> None:
            try:
                await self._sources[name].diff(rendered, sha)
            except Exception:  # asked again when judged, and reported then
                logger.debug("diff ahead of %s failed", name, exc_info=True)

        failed: Exception | None = None
        outcome: SyncOutcome | None = None
        async with anyio.create_task_group() as ahead:
            ahead.start_soon(diff_ahead)
            try:
                outcome = await reconcile_commit()
            except Exception as e:
                failed = e
                ahead.cancel_scope.cancel()
        if failed is not None:
            raise failed
        return outcome

    async def _rewound(self, state: SyncState, sha: str) -> bool:
        """Whether the head ``sha`` does not build on the last applied commit: the ref moved
        back or was rewritten (force push, rollback). It is followed all the same; counted and
        logged once per (applied, head) pair, however often its apply is retried."""
        previous = state.last_applied_revision
        if previous is None or previous == sha:
            return False
        if state.rewind_counted == (previous, sha):
            return True
        if await self._sources[state.spec.name].is_ancestor(previous, sha) is not False:
            return False  # a fast-forward, or nothing to compare with
        state.rewind_counted = (previous, sha)
        self._metrics.rewinds.labels(sync=state.spec.name).inc()
        logger.warning(
            "the ref moved backwards or was rewritten: following it",
            extra={
                "sync": state.spec.name,
                "ref": state.spec.source.ref,
                "previous": previous,
                "revision": sha,
            },
        )
        return True

    async def _reconcile_commit(
        self, state: SyncState, sha: str, root: SpanScope, *, started: float
    ) -> SyncOutcome | None:
        """Verify and lay out the fetched head, then sync it; the root span is open."""
        name, spec = state.spec.name, state.spec
        source = self._sources[name]
        with self._tracing.stage("git fetch", {"vcs.ref.head.revision": sha}) as span:
            try:
                await source.verify(sha)
                tree = await source.checkout(sha)
                author, subject = await source.commit_info(sha)
            except SourcePathMissing as e:
                # Final for this commit (Flux: "kustomization path not found"): reported once.
                span.record_error(str(e), error=e)
                root.record_error(str(e))
                state.missing_path = (sha, spec.source.path)
                self._record_failure(state, Reason.RENDER_FAILED, str(e))
                return None
            except VerificationError as e:
                span.record_error(str(e), error=e)
                root.record_error(f"commit {sha} not applied: {e}")
                self._record_failure(state, Reason.FETCH_FAILED, f"commit {sha} not applied: {e}")
                return None
            except AioreconcileError as e:
                span.record_error(str(e), error=e)
                root.record_error(str(e))
                self._record_failure(state, Reason.FETCH_FAILED, str(e))
                raise RetryLater(str(e)) from e
        root.set_attributes(
            {"aioreconcile.commit.author": author, "aioreconcile.commit.subject": subject}
        )
        unchanged = await self._unchanged(state, sha, tree)
        if unchanged is not None:
            return await self._record_unchanged(state, sha, unchanged, root, started=started)
        traceparent = root.traceparent
        inventory = self._inventory_key(name)
        stored: dict[ObjectRef, bytes | None] = {}
        previous = state.desired  # replaced by ``remember_desired``, this one stays as it was
        changes_only = _may_plan_changes_only(state)
        as_left: dict[ObjectRef, str] = {}  # planned objects that need no read (``_as_left``)

        def keep_stored(entry: ChangeSetEntry, obj: JsonObject) -> JsonObject | None:
            # The stored form as each response arrives, so the response can go at once; the
            # whole object only when its health is judged after the apply (``wait``).
            ref = entry.ref
            if ref in state.stored and entry.resource_version_after == state.written.get(ref):
                stored[ref] = state.stored[ref]  # our write changed nothing: as stored before
            else:
                stored[ref] = _stored_form(obj)
            return obj if spec.wait else None

        options = ApplyOptions(
            sync=name,
            revision=sha,
            inventory=inventory,
            traceparent=traceparent,
            concurrency=self._apply_concurrency,
            on_live=keep_stored,
            last_applied=lambda ref: _decoded(previous.get(ref)),
            as_left=as_left.get,
        )
        request = SyncRequest(
            directory=tree / spec.source.path,
            render=spec.render,
            options=options,
            root=tree,
            prune=spec.prune,
            allow_empty=spec.allow_empty,
            wait=spec.wait,
            wait_timeout_s=spec.wait_timeout_s,
            wait_in_place=False,  # polled by ("health", name) keys, holding no lane meanwhile
            refresh_discovery=not changes_only,
            known=_known_documents(state) if changes_only else KnownDocuments(),
        )
        known = request.known

        def remember_desired(manifests: Sequence[Manifest]) -> Sequence[Manifest] | None:
            digests = {
                m.ref: _known_digest(state, known, m) if changes_only else _digest(m.body)
                for m in manifests
            }
            planned = _plan_changes_only(state, manifests, digests) if changes_only else None
            if planned is not None:
                as_left.update(_as_left(state, planned))
            chosen = manifests if planned is None else planned
            kept = (previous.keys() & {m.ref for m in manifests}) - {m.ref for m in chosen}
            state.revision = sha
            state.suspects = {}  # planned now; events from here on count for the next push
            state.digests = digests
            state.known = known_documents(manifests)
            state.desired = {
                m.ref: previous[m.ref]  # not written: it carries the stamps it had
                if m.ref in kept
                else _compact(
                    stamp(
                        m.body,
                        sync=name,
                        revision=sha,
                        traceparent=traceparent,
                        inventory=inventory,
                    )
                )
                for m in manifests
            }
            self._index(name, previous, state.desired)
            # Watch before writing: a change made right after our apply must not fall between
            # the apply and a watch's first LIST.
            self._watch_all()
            return planned

        async with self._writing(state):
            outcome = await self._sync_and_record(
                state, request, remember_desired, stored, root, started=started
            )
        if self._after_reconcile is not None:
            if not self._release_pending:
                self._release_pending = True
                self._release_asked_at = self._clock()
            if self._release_due(("sync", state.spec.name)):
                with self._tracing.stage("after reconcile"):  # run: gc + malloc_trim
                    self._release()
        return outcome

    def _release_due(self, key: WorkKey) -> bool:
        """Whether the release a reconcile asked for runs now, as ``key``'s work ends: nothing
        else runs or is due (it holds the event loop: at 100,000 objects its full collection
        took 164-230 ms, during which a storm's heals and a webhook waited), or it has waited
        ``_RELEASE_EVERY_S`` (a long burst or storm still gives its memory back)."""
        return self._release_pending and (
            not self.queue.busy_besides(key)
            or self._clock() - self._release_asked_at >= _RELEASE_EVERY_S
        )

    def _release(self) -> None:
        """``after_reconcile`` (run: ``gc.collect()`` and ``malloc_trim``, tens of ms on an idle
        machine, more under load and with more objects, with the event loop held): after a
        reconcile that ran alone, else once when the last work under way ends (``_release_due``).
        Once per reconcile, a takeover's ~100 reconciles made ~100 full collections that
        stalled every other lane; a push during a heal storm stalled the storm's heals."""
        self._release_pending = False
        if self._after_reconcile is not None:
            self._after_reconcile()

    async def _unchanged(self, state: SyncState, sha: str, tree: Path) -> str | None:
        """Why the head ``sha`` cannot change what the sync renders, or None when it must be
        rendered and applied: it may, it cannot be told, or the sync is not in a known good
        state (never applied here, last reconcile failed, a health check under way), or its
        spec changed or a reconcile was requested (SpecChanged: render and apply in full)."""
        rendered = _skippable(state)
        if rendered is None:
            return None
        spec = state.spec
        with self._tracing.stage("git diff", {"aioreconcile.revision.rendered": rendered}) as span:
            try:
                diff = await self._sources[spec.name].diff(rendered, sha)
            except AioreconcileError as e:
                span.record_error(str(e), error=e)
                return None
            verdict = await anyio.to_thread.run_sync(
                partial(
                    changes.judge,
                    diff,
                    spec.source.path,
                    spec.render,
                    read=partial(_read_tree_file, tree),
                )
            )
            span.set_attributes(
                {
                    "aioreconcile.affected": verdict.affected,
                    "aioreconcile.affected.reason": verdict.reason,
                }
            )
        return None if verdict.affected else verdict.reason

    async def _record_unchanged(
        self, state: SyncState, sha: str, why: str, root: SpanScope, *, started: float
    ) -> SyncOutcome:
        """Record ``sha`` as applied without rendering or writing an object: its objects stay
        as the commit ``state.revision`` made them (their revision annotation names that one),
        which is what ``sha`` declares too. The inventory records the new revision."""
        inventory = self._inventories.get(state.spec.name)
        outcome = SyncOutcome(
            Reason.SUCCEEDED,
            f"unchanged: {why} (objects as of {state.revision})",
            sha,
            inventory_size=state.inventory_size,
        )
        if inventory is not None:
            try:
                with self._tracing.stage("inventory write"):
                    current = await inventory.load()
                    if current is not None:
                        await inventory.save(current, revision=sha)
            except AioreconcileError as e:
                outcome = SyncOutcome(
                    Reason.INVENTORY_FAILED,
                    f"inventory {inventory}: {e}",
                    sha,
                    inventory_size=state.inventory_size,
                )
        root.set_attributes(
            {"aioreconcile.reason": outcome.reason.value, "aioreconcile.unchanged": why}
        )
        if not outcome.ok:
            root.record_error(outcome.message)
        with self._tracing.stage("status update"):
            self._record(state, outcome, seconds=time.monotonic() - started)
        return outcome

    async def _sync_and_record(
        self,
        state: SyncState,
        request: SyncRequest,
        remember_desired: Callable[[Sequence[Manifest]], Sequence[Manifest] | None],
        stored: Mapping[ObjectRef, bytes | None],
        root: SpanScope,
        *,
        started: float,
    ) -> SyncOutcome:
        """``stored``: the stored form of each object the apply returned (None: we own no
        field of it), filled while it applies (``ApplyOptions.on_live``)."""
        outcome = await sync_once(
            request,
            cluster=self._cluster_for(state.spec.name),
            render=self._render,
            inventory=self._inventories.get(state.spec.name),
            before_apply=remember_desired,
            tracing=self._tracing,
        )
        totals = outcome.changeset.totals()
        root.set_attributes(
            {"aioreconcile.reason": outcome.reason.value}
            | {f"aioreconcile.objects.{action.value}": n for action, n in totals.items() if n}
        )
        if outcome.reason is Reason.PROGRESSING:
            root.set_attributes({"aioreconcile.health.waiting": len(outcome.not_ready)})
        elif not outcome.ok:
            root.record_error(outcome.message)
        self._watch_all()  # kinds whose CRD this apply created are known only now
        with (
            self._tracing.stage("watch sync"),
            anyio.move_on_after(_WATCH_SYNC_TIMEOUT_S) as waited,
        ):
            await self._watcher.wait_synced()
        state.watch_synced = not waited.cancelled_caught
        with self._tracing.stage("status update"):
            self._record(state, outcome, seconds=time.monotonic() - started, stored=stored)
        return outcome

    @asynccontextmanager
    async def _writing(self, state: SyncState) -> AsyncIterator[None]:
        """The reconcile's exclusive section: wait for the sync's running heals, hold new ones
        and events of its objects aside while it writes, then re-check those it did not write
        itself (an event whose resourceVersion is not the one our apply returned)."""
        state.writing = True
        # What the watch showed before this write is not the state to heal after it.
        for key in [k for k in self._observed if k[1] == state.spec.name]:
            del self._observed[key]
        self._writers += 1
        self._limit_heals()
        try:
            while state.heals_running:
                state.heals_idle = anyio.Event()
                await state.heals_idle.wait()
            yield
        finally:
            self._writers -= 1
            self._limit_heals()
            state.writing = False
            deferred, state.deferred = state.deferred, {}
            for ref, version in deferred.items():
                if ref in state.desired and (not version or version != state.written.get(ref)):
                    state.suspects[ref] = state.written.get(ref)
                    self.queue.put(("object", state.spec.name, ref))

    @contextmanager
    def _ahead_of_heals(self) -> Iterator[None]:
        """A push on its way to writing (queue to fetch, checkout, render): heals keep few slots
        meanwhile, as while it writes, but for at most ``PUSH_AHEAD_S``. In a storm its fetch
        shares the cores (the Git server's, on one node) and the apiserver with the heals: 32
        heals in flight made a 50-object push during bench.scale's storm 486-693 ms against
        278 ms idle, though it waited ~1 ms in the queue. The bound keeps a hung or slow Git
        server from slowing the heals for longer; they never stop (2 slots), as the apiserver's
        Priority and Fairness lends a higher level its seats without starving the lower."""
        expiry = anyio.CancelScope()
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self._pushes_ahead -= 1
                self._limit_heals()

        async def expire() -> None:
            with expiry:
                await anyio.sleep(PUSH_AHEAD_S)
                release()

        self._pushes_ahead += 1
        self._limit_heals()
        if self._tasks is not None:
            self._tasks.start_soon(expire)
        try:
            yield
        finally:
            expiry.cancel()
            release()

    def _limit_heals(self) -> None:
        """The one rule for the heals' limit: ``HEALS_BESIDE_WRITES`` while a sync writes or a
        push is on its way to writing, their whole limit otherwise."""
        few = self._writers > 0 or self._pushes_ahead > 0
        limit = min(HEALS_BESIDE_WRITES, self._heal_concurrency) if few else self._heal_concurrency
        self.queue.set_limit(_HEALS, limit)

    def _index(
        self, name: str, previous: Mapping[ObjectRef, bytes], current: Mapping[ObjectRef, bytes]
    ) -> None:
        """Keep ``ref -> sync`` for the objects ``name`` declares (first declarer keeps it)."""
        for ref in previous.keys() - current.keys():
            if self._owners.get(ref) == name:
                del self._owners[ref]
        for ref in current:
            owner = self._owners.get(ref)
            if owner is None or owner not in self.states or ref not in self.states[owner].desired:
                self._owners[ref] = name

    def _record(
        self,
        state: SyncState,
        outcome: SyncOutcome,
        *,
        seconds: float,
        stored: Mapping[ObjectRef, bytes | None] | None = None,
    ) -> None:
        """``stored``: the stored forms of the objects ``outcome`` applied (``keep_stored``);
        an outcome without an apply (unchanged, a health check's) has none."""
        name = state.spec.name
        forms = stored or {}
        progressing = outcome.reason is Reason.PROGRESSING
        state.spec_changed = False
        self._changed(state)
        if not progressing:  # a health check's reconcile is counted once, with its result
            state.reconciles += 1
            state.last_reconcile_at = time.time()
        state.reason, state.message = outcome.reason.value, outcome.message
        state.inventory_size = outcome.inventory_size
        for entry in outcome.applied.entries:
            form = forms.get(entry.ref)
            if form is None:
                # Failed or skipped, or we own none of its fields: nothing of ours to judge.
                state.stored.pop(entry.ref, None)
            else:
                state.stored[entry.ref] = form
            if entry.resource_version_after is not None:
                state.written[entry.ref] = entry.resource_version_after
        for entry in outcome.pruned.entries:
            state.written.pop(entry.ref, None)
        state.written = {ref: rv for ref, rv in state.written.items() if ref in state.desired}
        state.stored = {ref: form for ref, form in state.stored.items() if ref in state.desired}
        if progressing:
            self._start_health_check(state, outcome, seconds=seconds)
            return
        if outcome.ok:
            state.last_applied_revision = outcome.revision
            state.last_error = None
        else:
            failed = outcome.changeset.failed
            state.last_error = f"{failed[0].ref}: {failed[0].error}" if failed else outcome.message
        self._metrics.reconciles.labels(sync=name, reason=outcome.reason.value).inc()
        self._metrics.reconcile_seconds.labels(sync=name).observe(seconds)
        self._metrics.objects.labels(sync=name).set(len(state.desired))
        totals = {a.value: n for a, n in outcome.changeset.totals().items() if n}
        state.summary = ", ".join(
            f"{n} {action}" for action, n in totals.items() if action != Action.UNCHANGED
        )
        state.pruned = sum(1 for e in outcome.pruned.entries if e.action is Action.DELETED)
        log = logger.info if outcome.ok else logger.warning
        log(
            "reconciled" if outcome.ok else "reconcile failed",
            extra={
                "sync": name,
                "revision": outcome.revision,
                "reason": outcome.reason.value,
                "totals": totals,
                "seconds": round(seconds, 3),
                "error": state.last_error,
                "detail": outcome.message,
            }
            | _stage_timings(),
        )

    # --- health checks of ``wait: true`` syncs ---------------------------------------------------

    def _start_health_check(
        self, state: SyncState, outcome: SyncOutcome, *, seconds: float
    ) -> None:
        """Applied, not all healthy yet: remember what to re-read and queue the first round."""
        name, spec = state.spec.name, state.spec
        state.last_error = None
        state.health = HealthWait(
            revision=outcome.revision,
            deadline=self._clock() + spec.wait_timeout_s,
            timeout_s=spec.wait_timeout_s,
            started=time.monotonic() - seconds,
            waiting=outcome.not_ready,
        )
        self.queue.put(("health", name), delay_s=HEALTH_POLL_S)
        waiting_ref, waiting = outcome.not_ready[0]
        logger.info(
            "applied, waiting for health",
            extra={
                "sync": name,
                "revision": outcome.revision,
                "reason": outcome.reason.value,
                "waiting": len(outcome.not_ready),
                "object": str(waiting_ref),
                "health": waiting.message,
            },
        )

    async def _check_health(self, name: str) -> None:
        """One round of a health check: re-read what was not healthy, then succeed, fail at
        the deadline, or come back in ``HEALTH_POLL_S``. Short, so it never holds a lane."""
        state = self.states.get(name)
        wait = state.health if state is not None else None
        if state is None or wait is None:
            return
        still = tuple(await recheck_health(self._cluster_for(name), [r for r, _ in wait.waiting]))
        if state.health is not wait:
            return  # a newer commit was applied meanwhile: its own check decides
        if still and not health.failed(still) and self._clock() < wait.deadline:
            wait.waiting = still
            self.queue.put(("health", name), delay_s=HEALTH_POLL_S)
            return
        state.health = None
        if still:
            reason = Reason.HEALTH_CHECK_FAILED
            message = not_ready_message(still, timeout_s=wait.timeout_s)
        else:
            reason, message = Reason.SUCCEEDED, f"applied revision {wait.revision}"
        outcome = SyncOutcome(
            reason, message, wait.revision, not_ready=still, inventory_size=state.inventory_size
        )
        self._record(state, outcome, seconds=time.monotonic() - wait.started)

    def _changed(self, state: SyncState) -> None:
        """Tell ``on_change`` that the sync's state moved. It may be told before the state's
        fields are all set: the status writer batches and reads the state when it writes."""
        if self._on_change is not None:
            self._on_change(state)

    def _record_failure(self, state: SyncState, reason: Reason, message: str) -> None:
        state.reconciles += 1
        state.reason, state.message, state.last_error = reason.value, message, message
        self._changed(state)
        self._metrics.reconciles.labels(sync=state.spec.name, reason=reason.value).inc()
        logger.warning(
            "reconcile failed",
            extra={"sync": state.spec.name, "reason": reason.value, "error": message},
        )

    async def _verify_live(self, state: SyncState) -> None:
        """The safety net under the watches: list this sync's objects by label (one LIST per
        kind and namespace it declares, as the apply does, with the sync's own cluster access)
        and judge, as if its watch had reported it, every declared object that is missing from
        the listing or not at the resourceVersion of our last write.

        A watch event lost (a stalled connection, an event dropped on the way) is so healed by
        the next poll instead of never. Flux re-applies everything on each interval; this only
        reads, and writes nothing unless a declared field drifted. An object that left the
        listing is read by name: deleted, or stripped of our labels, it is healed either way.
        Where a LIST is refused (an account granted ``get`` by resourceNames cannot list), the
        objects are read by name too, as the apply does.
        """
        name = state.spec.name
        if state.revision is None or not state.desired:
            return
        cluster = self._cluster_for(name)
        scopes = {(r.group, r.kind, r.namespace): r.version for r in state.desired}
        listed: dict[ObjectRef, JsonObject] = {}
        unlisted: set[tuple[str, str, str]] = set()
        for (group, kind, namespace), version in scopes.items():
            try:
                listed |= await cluster.list_owned(
                    ObjectRef(group, kind, namespace, "", version), sync=name
                )
            except AioreconcileError as e:
                unlisted.add((group, kind, namespace))
                logger.info(
                    "could not list objects to verify: reading them one by one",
                    extra={"sync": name, "kind": kind, "namespace": namespace, "error": str(e)},
                )
        read = 0
        for ref in list(state.desired):
            live = listed.get(ref)
            if live is None:  # gone, unlabelled, or its kind could not be listed
                read += 1
                try:
                    live = await cluster.get(ref)
                except AioreconcileError as e:
                    logger.warning(
                        "could not verify an object",
                        extra={"sync": name, "object": str(ref), "error": str(e)},
                    )
                    continue
            if live is None:
                event = WatchEvent(EventType.DELETED, ref, tombstone(ref), synthetic=True)
            elif str((live.get("metadata") or {}).get("resourceVersion")) == state.written.get(ref):
                continue  # exactly as we wrote it
            else:
                event = WatchEvent(EventType.MODIFIED, ref, live, synthetic=True)
            self.on_watch_event(event)  # routed by ref: it may no longer carry our labels
        logger.debug(
            "verified the live objects",
            extra={
                "sync": name,
                "listed": len(listed),
                "read": read,
                "lists_refused": len(unlisted),
            },
        )

    def _watch_all(self) -> None:
        kinds = {ref for state in self.states.values() for ref in state.desired}
        self._watcher.watch(kinds)

    # --- single-object heal --------------------------------------------------------------------

    async def _heal(self, sync: str, ref: ObjectRef) -> None:
        observed = self._observed.pop(("object", sync, ref), None)
        state = self.states.get(sync)
        if state is None or state.revision is None:
            return
        if state.writing:
            state.deferred[ref] = ""  # re-checked when the reconcile has recorded its writes
            return
        state.heals_running += 1
        try:
            await self._heal_one(state, ref, observed)
        finally:
            state.heals_running -= 1
            if state.heals_running == 0 and state.heals_idle is not None:
                state.heals_idle.set()
            if state.heals_running == 0 and state.idle is not None:
                state.idle.set()

    async def _heal_one(
        self, state: SyncState, ref: ObjectRef, observed: JsonObject | None
    ) -> None:
        """Judge the object again on what we stored, and re-apply it if it drifted. Desired,
        stored and revision cannot change meanwhile: the reconcile waits for us.

        The object judged is ``observed``, the newest watch event's object for it, when there is
        one: no GET. controller-runtime reconciles from its informer cache and Argo CD's
        self-heal compares against its live-state cache the same way; a server-side apply needs
        no precondition, so an event that is already stale costs at most an apply that changes
        nothing, and the event of that write settles it. The object is read instead when no
        event was kept: a deletion (deleted, or merely stripped of our labels?), a heal set
        aside while a reconcile wrote, a retry, the end of a fight pause, past
        ``OBSERVED_LIMIT``."""
        sync, revision = state.spec.name, state.revision
        if ref not in state.desired or revision is None:
            return  # no longer declared (pruned meanwhile)
        cluster = self._cluster_for(sync)
        live = observed if observed is not None else await cluster.get(ref)
        desired = inflated(state.desired[ref])
        event = WatchEvent(
            EventType.DELETED if live is None else EventType.MODIFIED, ref, live or {}
        )
        verdict = judge(
            event, desired, stored=_decoded(state.stored.get(ref)), our_resource_version=None
        )
        if not verdict.drifted:
            return  # already as stored (another heal, or the event was stale)
        refused = refusal(desired, live, sync=sync)
        if refused is not None:
            # Another sync took it over (adopt): not ours to heal, and retrying will not help;
            # our next reconcile reports it as failed, naming both syncs.
            logger.warning(
                "not healing", extra={"sync": sync, "object": str(ref), "reason": refused[1]}
            )
            return
        if not state.spec.self_heal:
            # Queued only for a change set aside while a reconcile wrote: report it now.
            self._reported(state, ref, verdict)
            return
        allowed, wait_s = self._fights.allow(ref, now=self._clock())
        if not allowed:
            state.fight_pauses += 1
            self._metrics.fights.labels(sync=sync).inc()
            logger.warning(
                "another writer keeps changing this object: not healing it for a while",
                extra={
                    "sync": sync,
                    "object": str(ref),
                    "pause_s": round(wait_s, 1),
                    # Who to talk to: the field managers that wrote over us, latest first.
                    "writers": list(verdict.writers),
                },
            )
            self.queue.put(("object", sync, ref), delay_s=wait_s)
            return
        manifest = Manifest(ref, desired, origin=f"drift heal of {ref}")
        options = ApplyOptions(sync=sync, revision=revision, inventory=self._inventory_key(sync))
        linked = _traceparent_of(live) or _traceparent_of(desired)
        fields = list(verdict.fields) or ["(deleted)"]
        with self._tracing.heal(
            sync=sync,
            ref=ref,
            revision=revision,
            repository_url=state.spec.source.url,
            link_traceparent=linked,
            writers=verdict.writers,
            fields=fields,
        ) as span:
            # A declared value that differs is no server normalisation: write without a dry-run.
            entry, applied = await cluster.apply_object(
                manifest, options, live=live, known_changed=True
            )
            ours = entry.resource_version_after is not None and (
                entry.resource_version_after == state.written.get(ref)
            )
            if ours and entry.action is Action.CONFIGURED:
                # Still as our last write left it (the event judged was stale): nothing healed.
                entry = replace(entry, action=Action.UNCHANGED)
            self._tracing.objects([entry], operation="apply")
            if entry.action is Action.FAILED:
                span.record_error(entry.error or "heal failed")
            elif entry.action not in (Action.UNCHANGED, Action.SKIPPED):
                # Inside the heal's span: the line carries the heal trace's id.
                logger.info(
                    "drift healed",
                    extra={
                        "sync": sync,
                        "object": str(ref),
                        "action": entry.action.value,
                        "revision": state.revision,
                        # What the heal span says, for a reader of the log alone (the demo).
                        "writers": list(verdict.writers),
                        "fields": fields,
                        "linked_traceparent": linked,
                    },
                )
        if applied is not None and not ours:  # else stored as it was after our last write
            form = _stored_form(applied)
            if form is None:
                state.stored.pop(ref, None)
            else:
                state.stored[ref] = form
        if entry.resource_version_after is not None:
            state.written[ref] = entry.resource_version_after
        if entry.action is Action.FAILED:
            self._metrics.heals.labels(sync=sync, result="failed").inc()
            raise RetryLater(f"heal of {ref} failed: {entry.error}")
        if entry.action not in (Action.UNCHANGED, Action.SKIPPED):
            state.heals += 1
            writers = ", ".join(verdict.writers) or "unknown writer"
            state.last_healed = f"{ref} ({entry.action.value}; changed by {writers})"
            self._metrics.heals.labels(sync=sync, result=entry.action.value).inc()
            self._changed(state)


def _pool_of(key: WorkKey) -> str | None:
    """Heals run in their own pool of the queue; syncs and health rounds share the other."""
    return _HEALS if key[0] == "object" else None


def _up_to_date(state: SyncState, sha: str) -> bool:
    """Whether there is nothing to do for ``sha``: the sync last applied it successfully, or
    applied it and its health check is under way (it ends on its own deadline), or already
    reported that it lacks the sync's path. Never after a spec change: the same commit may give
    other objects."""
    if state.spec_changed:
        return False
    if sha == state.last_applied_revision and state.reason == Reason.SUCCEEDED:
        return True
    if state.missing_path == (sha, state.spec.source.path):
        return True  # it lacks the sync's path, reported once: a commit never changes
    return state.health is not None and state.health.revision == sha


def _skippable(state: SyncState) -> str | None:
    """The rendered commit a new head may be judged against (``_unchanged``), or None when
    the sync must render and apply in full whatever changed: never rendered here, spec
    changed or a reconcile requested, last reconcile failed, a health check under way."""
    rendered = state.revision
    if (
        rendered is None
        or state.spec_changed
        or state.reason != Reason.SUCCEEDED
        or state.health is not None
        or state.last_applied_revision is None
    ):
        return None
    return rendered


def _may_be_up_to_date(state: SyncState) -> bool:
    """Whether some head could find the sync up to date (``_up_to_date``), so that an
    ``ls-remote`` may spare a fetch. A sync new to this process (a start, a shard taken over),
    changed or requested, or whose last reconcile failed, fetches whatever the head is: asking
    the server first would cost one more round trip and git process per sync for nothing (a
    takeover of 100 Syncs of one repository made 100 of them, while their fetches were one,
    shared)."""
    if state.spec_changed:
        return False
    applied = state.last_applied_revision is not None and state.reason == Reason.SUCCEEDED
    return applied or state.missing_path is not None or state.health is not None


def _may_plan_changes_only(state: SyncState) -> bool:
    """Whether a reconcile may plan only the documents that changed (``_plan_changes_only``):
    the sync's rendered commit may be judged against (``_skippable``: rendered and applied
    here, succeeded in full under the same spec, no health check under way), its digests are
    known, and its last reconcile ended with its watches synced, so a foreign change since
    then was seen (``SyncState.suspects``). Otherwise (a restart, a failure, a health check
    under way, SpecChanged) everything is planned."""
    return _skippable(state) is not None and bool(state.digests) and state.watch_synced


def _plan_changes_only(
    state: SyncState, manifests: Sequence[Manifest], digests: Mapping[ObjectRef, bytes]
) -> list[Manifest]:
    """The manifests a push must plan: new documents, changed ones (their rendered body's
    digest differs from the last render's), and those whose object may not be as we left it:
    drifted or deleted since (``suspects``: with ``selfHeal: false`` they stay drifted until a
    reconcile plans them, as before) or holding none of our fields (refused, skipped, failed).

    The others are as the last successful reconcile applied or found them, and nothing since
    said otherwise: planning them would LIST and decide what is known to be UNCHANGED. This
    works on rendered output, so plain YAML, kustomize and helm alike; documents removed from
    the source are not in ``manifests`` and are pruned from the inventory as before. Flux's
    kustomize-controller and Argo CD compare every object of every revision (Argo CD caches
    the rendered manifests per revision, not the comparison); here the unchanged ones are not
    even listed, which is most of a 1,000-object sync's push."""
    previous, stored = state.digests, state.stored
    return [
        m
        for m in manifests
        if previous.get(m.ref) != digests[m.ref] or _suspect(state, m.ref) or m.ref not in stored
    ]


def _suspect(state: SyncState, ref: ObjectRef) -> bool:
    """A watch event showed ``ref`` drifted, deleted, opted out or taken by another sync, and
    we have not written it since: a heal that wrote it (a new resourceVersion of ours) put it
    back as declared, so a storm healed before the push costs the push no reads."""
    return ref in state.suspects and state.suspects[ref] == state.written.get(ref)


def _as_left(state: SyncState, planned: Sequence[Manifest]) -> dict[ObjectRef, str]:
    """Of the ``planned`` objects, those as our last write left them, with that write's
    resourceVersion: written by us, with our fields stored, and no watch event since showing
    drift, a deletion, an opt-out or another sync's label (``suspects``). Only valid on the
    ``_plan_changes_only`` path, whose conditions include watches that were synced. Their
    changed declaration is applied without reading them first (``ApplyOptions.as_left``):
    for 50 changed ConfigMaps among 600 in a namespace, the LIST of all 600 (MiBs of bodies
    and managedFields) was most of the apply."""
    written, stored = state.written, state.stored
    return {
        m.ref: written[m.ref]
        for m in planned
        if m.ref in written and m.ref in stored and not _suspect(state, m.ref)
    }


def _known_documents(state: SyncState) -> KnownDocuments:
    """The last render's documents for this one, the objects ``_plan_changes_only`` will plan
    whatever their text (suspect, or holding none of our fields) marked to be parsed in the
    render's worker thread rather than on the event loop."""
    known = state.known or KnownDocuments()
    known.parse = frozenset(
        r for r in known.refs.values() if r not in state.stored or _suspect(state, r)
    )
    return known


def _known_digest(state: SyncState, known: KnownDocuments | None, m: Manifest) -> bytes:
    """``_digest`` of ``m``'s body without parsing it: its text and its ref are the ones the
    last render had (``state.known``, the render ``state.digests`` came from), so its body is
    that render's too (the text fixes what it declares, the ref what a default added)."""
    if known is not None and m.source is not None and known.refs.get(m.source) == m.ref:
        digest = state.digests.get(m.ref)
        if digest is not None:
            return digest
    return _digest(m.body)


def _digest(body: JsonObject) -> bytes:
    """A document's identity for ``_plan_changes_only``: 16 bytes of blake2b over its JSON (a
    renderer emits the same bytes for the same input, key order included)."""
    return hashlib.blake2b(orjson.dumps(body), digest_size=16).digest()


def _stage_timings() -> dict[str, object]:
    """The stages of the reconcile under way, in milliseconds, for its log line."""
    stages = _STAGES.get()
    if not stages:
        return {}
    return {"stages_ms": {name: round(1000 * s, 1) for name, s in stages.items()}}


def _read_tree_file(tree: Path, relative: str) -> str | None:
    """Blocking (a worker thread): a file of a laid-out commit, for ``changes.judge``; None
    unless it is a regular file inside the tree (a link leading out is not followed; judge
    counts links among the inputs as changes)."""
    root = tree.resolve()
    path = root / relative
    try:
        if path.is_symlink() or not path.resolve().is_relative_to(root) or not path.is_file():
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError):
        return None


def _stored_form(obj: JsonObject) -> bytes | None:
    """What the server stored for our fields of ``obj``, compact; None if we own none."""
    fields = our_fields(obj)
    return None if fields is None else _compact(as_stored(obj, fields))


def _decoded(encoded: bytes | None) -> JsonObject | None:
    return inflated(encoded) if encoded is not None else None


def _compact(obj: JsonObject) -> bytes:
    """The form the controller keeps per object: orjson, deflated at zlib's fastest level.

    Realistic manifests (bench/manifests.py) shrink from ~2.1 KB to ~0.55 KB (desired) and from
    ~2.1 KB to ~0.5 KB (stored), ~33 MiB less at 10,000 objects, for ~20-40 us per object when
    it is remembered and ~10 us when it is judged (docs/controller-benchmarks.md): the
    engine's ``deflated``, which the parse keeps bodies in too."""
    return deflated(obj)


def _ref_type(ref: str) -> str:
    if len(ref) == 40 and all(c in "0123456789abcdef" for c in ref):
        return "commit"
    return "tag" if ref.startswith("refs/tags/") else "branch"


def _traceparent_of(obj: JsonObject | None) -> str | None:
    if obj is None:
        return None
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(TRACEPARENT_ANNOTATION)
    return value if isinstance(value, str) else None


__all__ = ["Controller", "DriftKind", "SyncState"]
