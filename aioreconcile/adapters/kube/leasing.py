"""Leader election over a ``coordination.k8s.io/v1`` Lease, through our own transport.

The loops of client-go's ``LeaderElector`` (``tools/leaderelection/leaderelection.go``) around
the pure decisions of ``engine.leadership``:

* ``acquire``: every retry period (jittered up by up to 20 %) read the Lease and, when it is
  missing, released or expired *by our local clock*, create or take it.
* ``hold``: every retry period renew it; a leader that cannot renew within the renew deadline
  (or sees another holder) stops leading and returns, well before any standby may take over.
* ``release``: write an empty holder with ``leaseDurationSeconds: 1``, so a standby takes over
  at its next retry instead of after the lease duration (client-go ``ReleaseOnCancel``).

Every write is a PUT guarded by the resourceVersion last read (``leaselock.go``'s ``Update``):
of two candidates that both saw the Lease expire, the apiserver lets exactly one write and
answers the other 409 Conflict; a 409 makes us re-read and decide again on what is there now.
A leader renews with the resourceVersion of its own last write, without a GET first, as newer
client-go does; a 409 then is someone else's write, and the re-read shows whose.
"""

import copy
import logging
import random as _random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

import anyio

from aioreconcile.adapters.kube.transport import KubeTransport
from aioreconcile.engine.errors import AioreconcileError, ConflictError, NotFoundError
from aioreconcile.engine.leadership import (
    LeaseRecord,
    LeaseTimings,
    Observed,
    acquire_delay,
    claim,
    expired,
    held_by_other,
    must_step_down,
    observe,
    released,
)
from aioreconcile.engine.model import JsonObject

logger = logging.getLogger(__name__)

LEASE_API_VERSION: Final = "coordination.k8s.io/v1"
DEFAULT_TIMINGS: Final = LeaseTimings()  # client-go's 15 s / 10 s / 2 s
_CONFLICT_REREADS: Final = 1  # 409s re-read and decided again within one attempt (+1 fast)


def utc_now() -> datetime:
    """The wall clock that stamps Lease times (``acquireTime``, ``renewTime``), in UTC."""
    return datetime.now(UTC)


class LeaseElector:
    """One candidate for the Lease ``namespace/name``, known as ``identity``.

    ``on_change(leading)`` is called on every transition (started or stopped leading);
    ``leading`` and ``holder`` (the last holder seen, "" if none) may be read at any time.
    """

    def __init__(
        self,
        transport: KubeTransport,
        *,
        namespace: str,
        name: str,
        identity: str,
        timings: LeaseTimings = DEFAULT_TIMINGS,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = utc_now,
        random: Callable[[], float] = _random.random,
        labels: dict[str, str] | None = None,
    ) -> None:
        if not identity:
            raise ValueError("a leader election identity must not be empty")
        self._transport = transport
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timings = timings
        self._on_change = on_change
        self._clock = clock
        self._wall = wall
        self._random = random
        self._labels = dict(labels or {})  # set when we create the Lease (sharding lists by them)
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self._lease: JsonObject | None = None  # the whole object last read or written
        self._observed: Observed | None = None
        self._leading = False
        self._renewed_at = 0.0  # when the last successful acquire/renew request was sent
        self._reported_holder = ""

    def __str__(self) -> str:
        return f"Lease/{self.namespace}/{self.name}"

    @property
    def leading(self) -> bool:
        return self._leading

    @property
    def holder(self) -> str:
        return self._observed.record.holder if self._observed is not None else ""

    @property
    def record(self) -> LeaseRecord | None:
        return self._observed.record if self._observed is not None else None

    @property
    def observed(self) -> Observed | None:
        return self._observed

    def abandon(self, why: str) -> None:
        """Stop counting ourselves as holder without writing (the caller stopped its work)."""
        if self._leading:
            self._lose(why)

    @property
    def deadline(self) -> float | None:
        """While leading: when (our monotonic clock) we must have renewed or step down."""
        return self._renewed_at + self.timings.renew_deadline_s if self._leading else None

    # --- the loops -----------------------------------------------------------------------------

    async def acquire(self) -> None:
        """Return once we hold the Lease (retrying every jittered retry period)."""
        logger.info(
            "waiting for leadership",
            extra={"lease": str(self), "identity": self.identity},
        )
        while not await self.try_acquire_or_renew():  # noqa: ASYNC110 (polling the API)
            await anyio.sleep(acquire_delay(self.timings, random=self._random()))
        self._set_leading(True)

    async def hold(self) -> None:
        """Renew every retry period while leading; return once leadership is lost: no renewal
        within the renew deadline, or another holder seen. ``leading`` is False by then."""
        timings = self.timings
        while self._leading:
            await anyio.sleep(timings.retry_period_s)
            while True:
                sent = self._clock()
                if must_step_down(self._renewed_at, timings=timings, now=sent):
                    self._lose("could not renew within the renew deadline")
                    return
                remaining = self._renewed_at + timings.renew_deadline_s - sent
                renewed = False
                with anyio.move_on_after(remaining):
                    renewed = await self.try_acquire_or_renew()
                if renewed:
                    break
                if held_by_other(self._observed, identity=self.identity, now=self._clock()):
                    self._lose(f"the Lease is held by {self.holder}")
                    return
                await anyio.sleep(min(timings.retry_period_s, max(remaining, 0.0)))

    async def release(self) -> bool:
        """Give the Lease up at once (a graceful stop), if it is ours: True if released.
        Call it only once nothing guarded by the Lease runs any more (client-go's warning on
        ``ReleaseOnCancel``). Bounded by the renew deadline; never raises."""
        was_leading = self._leading
        self._set_leading(False)
        if not was_leading:
            return False
        with anyio.move_on_after(self.timings.renew_deadline_s):
            try:
                for _ in range(1 + _CONFLICT_REREADS):
                    record = released(self._observed, identity=self.identity, wall=self._wall())
                    if record is None:
                        return False  # someone else holds it now
                    try:
                        await self._write(record)
                    except ConflictError:
                        await self._read()
                        continue
                    logger.info("released the Lease", extra={"lease": str(self)})
                    return True
                return False
            except AioreconcileError as e:
                logger.warning("could not release the Lease", extra={"error": str(e)})
                return False
        logger.warning("could not release the Lease in time", extra={"lease": str(self)})
        return False

    async def step(self) -> bool:
        """One round of ``acquire`` and ``hold`` for a caller that runs the loop itself (the
        shard elector holds many Leases from one loop): step down if the renew deadline
        passed, else acquire or renew once (bounded by what is left of the deadline); step
        down if another holder is seen. Returns whether we lead afterwards."""
        timings = self.timings
        sent = self._clock()
        if self._leading and must_step_down(self._renewed_at, timings=timings, now=sent):
            self._lose("could not renew within the renew deadline")
            return False
        limit = (
            self._renewed_at + timings.renew_deadline_s - sent
            if self._leading
            else timings.renew_deadline_s
        )
        renewed = False
        with anyio.move_on_after(limit):
            renewed = await self.try_acquire_or_renew()
        if renewed:
            self._set_leading(True)
        elif self._leading and held_by_other(self._observed, identity=self.identity, now=sent):
            self._lose(f"the Lease is held by {self.holder}")
        elif self._leading and must_step_down(self._renewed_at, timings=timings, now=self._clock()):
            self._lose("could not renew within the renew deadline")
        return self._leading

    def see(self, lease: JsonObject | None) -> None:
        """The Lease as another read saw it (a LIST of all of a shard set's Leases, None when it
        was not there): judged as our own GET would be, its expiry clock kept if unchanged."""
        if lease is None:
            if not self._leading:
                self._lease, self._observed = None, None
            return
        version = _resource_version(lease)
        if self._observed is not None and self._observed.resource_version == version:
            return  # nothing new (our own write, or the same read)
        self._lease = lease
        self._observed = observe(
            self._observed, LeaseRecord.of_lease(lease), version, now=self._clock()
        )
        self._report_holder()

    async def delete(self) -> None:
        """Delete the Lease if it is still the one we last saw (a member Lease on a graceful
        stop). Never raises: a Lease left behind only ages."""
        self._set_leading(False)
        version = self._observed.resource_version if self._observed is not None else None
        if version is None:
            return
        body = {"preconditions": {"resourceVersion": version}}
        with anyio.move_on_after(self.timings.renew_deadline_s):
            try:
                await self._transport.request(
                    "DELETE", self._path, body=body, time_limit=self.timings.renew_deadline_s
                )
            except AioreconcileError as e:
                logger.info(
                    "could not delete the Lease", extra={"lease": str(self), "error": str(e)}
                )

    # --- one attempt -----------------------------------------------------------------------------

    async def try_acquire_or_renew(self) -> bool:
        """One attempt (client-go ``tryAcquireOrRenew``): read (unless renewing our own valid
        Lease), decide, write with the resourceVersion read. A 409 re-reads and decides again.
        Errors are logged and count as a failed attempt."""
        sent = self._clock()
        try:
            # Renewing our own valid Lease: write with our last resourceVersion, no GET first.
            fast = (
                self._leading
                and self._lease is not None
                and self._observed is not None
                and not expired(self._observed, now=sent)
            )
            for attempt in range(2 + _CONFLICT_REREADS):
                if attempt or not fast:
                    await self._read()
                record = claim(
                    self._observed,
                    identity=self.identity,
                    timings=self.timings,
                    now=self._clock(),
                    wall=self._wall(),
                )
                self._report_holder()
                if record is None:
                    return False
                try:
                    await self._write(record)
                except ConflictError as e:
                    logger.debug("Lease conflict: reading it again", extra={"error": str(e)})
                    continue
                self._renewed_at = sent
                self._report_holder()
                return True
            return False
        except AioreconcileError as e:
            logger.warning(
                "could not acquire or renew the Lease",
                extra={"lease": str(self), "error": str(e)},
            )
            return False

    async def _read(self) -> None:
        try:
            response = await self._transport.request(
                "GET", self._path, time_limit=self.timings.renew_deadline_s
            )
        except NotFoundError:
            self._lease, self._observed = None, None
            return
        self._lease = response.body
        self._observed = observe(
            self._observed,
            LeaseRecord.of_lease(response.body),
            _resource_version(response.body),
            now=self._clock(),
        )

    async def _write(self, record: LeaseRecord) -> None:
        """Create the Lease, or replace its spec's election fields with a PUT carrying the
        resourceVersion last read (a 409 ``ConflictError`` when someone wrote in between)."""
        if self._lease is None:
            body: JsonObject = {
                "apiVersion": LEASE_API_VERSION,
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace}
                | ({"labels": self._labels} if self._labels else {}),
                "spec": record.spec(),
            }
            path = self._path.rsplit("/", 1)[0]
            response = await self._transport.request(
                "POST", path, body=body, time_limit=self.timings.renew_deadline_s
            )
        else:
            body = copy.deepcopy(self._lease)
            body["spec"] = {**(body.get("spec") or {}), **record.spec()}
            body.setdefault("metadata", {})["resourceVersion"] = (
                self._observed.resource_version if self._observed is not None else ""
            )
            response = await self._transport.request(
                "PUT", self._path, body=body, time_limit=self.timings.renew_deadline_s
            )
        self._lease = response.body
        self._observed = Observed(record, _resource_version(response.body), since=self._clock())

    # --- transitions -----------------------------------------------------------------------------

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            logger.info(
                "started leading",
                extra={"lease": str(self), "identity": self.identity},
            )
        if self._on_change is not None:
            self._on_change(leading)

    def _lose(self, why: str) -> None:
        logger.error(
            "stopped leading",
            extra={"lease": str(self), "identity": self.identity, "reason": why},
        )
        self._set_leading(False)

    def _report_holder(self) -> None:
        """Log each new holder seen once (client-go ``OnNewLeader``)."""
        holder = self.holder
        if holder != self._reported_holder:
            self._reported_holder = holder
            logger.info("leader observed", extra={"lease": str(self), "holder": holder or None})


def _resource_version(obj: JsonObject) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


__all__ = ["LEASE_API_VERSION", "LeaseElector"]
