"""CRD mode: a webhook accepted by any replica is a durable request on the Sync.

Every replica, leader or standby, serves the Receivers' paths. ``SyncCatalog`` keeps every Sync
object's spec from a read-only watch, so a replica that reconciles nothing can still match a
delivery against the syncs its receiver may trigger. ``ReconcileRequests.record`` then hands
each triggered sync to whoever reconciles it:

- a sync this replica reconciles now (``owns``: it leads, or holds the sync's shard, and the
  controller has the sync) is pushed in memory, as in file mode: no apiserver round trip. It is
  as durable as the hand-off: if this replica dies before applying it, the replica that takes
  the sync over reconciles every sync it takes, which fetches the ref's head;
- any other is recorded on its Sync object with one merge PATCH (``resources.reconcile_request``:
  ``reconcile.aioreconcile.dev/requestedAt`` and the hinted commit), which the reconciling
  replica's Sync watch turns into a reconcile (``reactor.resources.SyncResources``). The API
  server holds it: the receiving replica may die right after answering.

The webhook is answered 202 only once every PATCH succeeded; a PATCH that fails (apiserver
unreachable, forbidden) or takes longer than ``REQUEST_TIMEOUT_S`` makes the whole delivery a
503, so the Git server delivers it again (recording twice is harmless: a request means "look at
the ref now"). Flux's notification-controller answers its receivers the same way: it annotates
each target object with ``reconcile.fluxcd.io/requestedAt`` and answers 500 if one failed
(fluxcd/notification-controller ``internal/server/receiver_handlers.go``).
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import anyio

from aioreconcile.engine.config import SyncSpec
from aioreconcile.engine.configuration import ConfigError
from aioreconcile.engine.errors import AioreconcileError
from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.metrics import Counter, Registry
from aioreconcile.engine.resources import reconcile_request, sync_from_resource
from aioreconcile.engine.triggers import Push
from aioreconcile.reactor.ports import ReconcileRequester

logger = logging.getLogger(__name__)

# Every PATCH of one delivery together; GitHub gives up on a delivery after 10 s.
REQUEST_TIMEOUT_S: Final = 5.0
_CONCURRENCY: Final = 16

Key = tuple[str, str]  # (namespace, name) of a Sync


@dataclass
class SyncCatalog:
    """The spec of every Sync object, from a watch (reads only): what a delivery is matched
    against on every replica. A Sync its parser refuses, or one being deleted, matches nothing
    (the reconciling replica reports why in its status)."""

    _specs: dict[str, SyncSpec] = field(default_factory=dict)  # by sync identity
    _keys: dict[str, Key] = field(default_factory=dict)
    _by_key: dict[Key, str] = field(default_factory=dict)

    def on_event(self, event: WatchEvent) -> None:
        key = (event.ref.namespace, event.ref.name)
        self._drop(key)
        if event.type is EventType.DELETED:
            return
        if (event.object.get("metadata") or {}).get("deletionTimestamp"):
            return
        try:
            spec = sync_from_resource(event.object)
        except ConfigError:
            return
        self._specs[spec.name] = spec
        self._keys[spec.name] = key
        self._by_key[key] = spec.name

    def _drop(self, key: Key) -> None:
        identity = self._by_key.pop(key, None)
        if identity is not None:
            self._specs.pop(identity, None)
            self._keys.pop(identity, None)

    def specs(self) -> list[SyncSpec]:
        return list(self._specs.values())

    def key(self, identity: str) -> Key | None:
        """The Sync object (namespace, name) of a sync identity."""
        return self._keys.get(identity)


@dataclass
class ReconcileRequests:
    """Hands a delivery's ``Push`` triggers to whoever reconciles each sync (module doc)."""

    catalog: SyncCatalog
    requester: ReconcileRequester
    owns: Callable[[str], bool]  # whether this replica reconciles that sync now
    push: Callable[[Push], None]  # the controller's in-memory trigger
    registry: Registry
    timeout_s: float = REQUEST_TIMEOUT_S
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    handoffs: Counter = field(init=False)

    def __post_init__(self) -> None:
        self.handoffs = Counter(
            "aioreconcile_webhook_handoffs_total",
            "Syncs a webhook triggered, by how they were handed on: pushed in memory to this "
            "replica's controller (direct), recorded on the Sync (recorded), the Sync gone "
            "(gone), or not recorded: the delivery is answered 503 (failed).",
            ["result"],
            registry=self.registry,
        )

    async def record(self, pushes: Sequence[Push]) -> None:
        """Push or record every trigger; raise AioreconcileError unless all were handed on."""
        recorded: list[Push] = []
        for push in pushes:
            if self.owns(push.sync):
                self.push(push)
                self.handoffs.labels(result="direct").inc()
            else:
                recorded.append(push)
        if not recorded:
            return
        failures: list[str] = []
        limiter = anyio.CapacityLimiter(_CONCURRENCY)
        with anyio.move_on_after(self.timeout_s) as deadline:
            async with anyio.create_task_group() as tasks:
                for push in recorded:
                    tasks.start_soon(self._record_one, push, limiter, failures)
        if deadline.cancelled_caught:
            failures.append(f"not recorded within {self.timeout_s:g} s")
        if failures:
            self.handoffs.labels(result="failed").inc(len(failures))
            raise AioreconcileError(f"could not record the request on every Sync: {failures[0]}")

    async def _record_one(
        self, push: Push, limiter: anyio.CapacityLimiter, failures: list[str]
    ) -> None:
        key = self.catalog.key(push.sync)
        if key is None:
            self.handoffs.labels(result="gone").inc()
            return
        # The request span: the parent when the sender's trace was continued, else the link.
        event = push.event
        trace = (event.traceparent or event.link_traceparent) if event is not None else None
        patch = reconcile_request(self.clock(), push.sha, traceparent=trace)
        async with limiter:
            try:
                present = await self.requester.request_reconcile(key[0], key[1], patch)
            except AioreconcileError as e:
                failures.append(f"Sync {key[0]}/{key[1]}: {e}")
                return
        self.handoffs.labels(result="recorded" if present else "gone").inc()
        logger.info(
            "webhook recorded on the Sync",
            extra={"sync": f"{key[0]}/{key[1]}", "hint": push.sha, "recorded": present},
        )


__all__ = ["REQUEST_TIMEOUT_S", "ReconcileRequests", "SyncCatalog"]
