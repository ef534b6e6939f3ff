"""Leader election over a ``coordination.k8s.io/v1`` Lease: the decisions, as functions of data.

Learnt from client-go ``tools/leaderelection`` (``leaderelection.go``, ``resourcelock/
leaselock.go``):

* Expiry is judged on the local monotonic clock, never on the Lease's timestamps: a candidate
  remembers *when it last saw the record change* (``Observed.since``) and takes the Lease only
  when ``leaseDurationSeconds`` have passed since then without a change. Clocks may then differ
  arbitrarily between replicas (only their rates must roughly agree); ``renewTime`` and
  ``acquireTime`` are written for people to read.
* A record whose ``holderIdentity`` is empty was released: anyone may take it at once.
* Acquiring someone else's (expired or released) Lease counts a transition; renewing our own
  keeps ``acquireTime`` and the count.
* Releasing writes an empty holder and ``leaseDurationSeconds: 1`` (client-go's ``release``),
  so a standby takes over at its next retry instead of after the lease duration.
* The leader steps down when it could not renew for ``renew_deadline_s``, which is shorter than
  the lease duration: it stops writing before any standby may consider the Lease expired.

The I/O (GET, create, resourceVersion-guarded PUT, the loops) is ``adapters.kube.leasing``.
"""

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final

from aioreconcile.engine.model import JsonObject

JITTER_FACTOR: Final = 1.2  # client-go's: an acquire retry waits retry_period * [1, 1.2)


@dataclass(frozen=True)
class LeaseTimings:
    """client-go's defaults (15 s / 10 s / 2 s) and its rules: the renew deadline is shorter
    than the lease duration (the margin in which a leader that cannot renew has stopped before
    a standby may take over), and longer than a jittered retry period."""

    lease_duration_s: int = 15
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if self.lease_duration_s < 1 or self.renew_deadline_s <= 0 or self.retry_period_s <= 0:
            raise ValueError(
                "lease duration (whole seconds, >= 1), renew deadline and retry period must be "
                f"positive, got {self.lease_duration_s}, {self.renew_deadline_s}, "
                f"{self.retry_period_s}"
            )
        if self.lease_duration_s <= self.renew_deadline_s:
            raise ValueError(
                f"the lease duration ({self.lease_duration_s} s) must be longer than the renew "
                f"deadline ({self.renew_deadline_s:g} s)"
            )
        if self.renew_deadline_s <= JITTER_FACTOR * self.retry_period_s:
            raise ValueError(
                f"the renew deadline ({self.renew_deadline_s:g} s) must be longer than "
                f"{JITTER_FACTOR} x the retry period ({self.retry_period_s:g} s)"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec as the election reads and writes it."""

    holder: str = ""
    duration_s: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def of_lease(cls, lease: JsonObject) -> "LeaseRecord":
        spec = lease.get("spec") or {}
        duration, transitions = spec.get("leaseDurationSeconds"), spec.get("leaseTransitions")
        acquired, renewed = spec.get("acquireTime"), spec.get("renewTime")
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration_s=duration if isinstance(duration, int) else 0,
            acquire_time=acquired if isinstance(acquired, str) else None,
            renew_time=renewed if isinstance(renewed, str) else None,
            transitions=transitions if isinstance(transitions, int) else 0,
        )

    def spec(self) -> JsonObject:
        """The five Lease spec fields this record sets (other spec fields are left alone)."""
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration_s,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


@dataclass(frozen=True)
class Observed:
    """The record last read or written, its resourceVersion, and when (local monotonic
    seconds) its content was first seen: the only time expiry is judged by."""

    record: LeaseRecord
    resource_version: str
    since: float


def micro_time(moment: datetime) -> str:
    """A ``metav1.MicroTime`` (RFC 3339 with microseconds, UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def observe(
    previous: Observed | None, record: LeaseRecord, resource_version: str, *, now: float
) -> Observed:
    """``record`` as read at ``now``: its clock restarts only if its content changed (a renew
    changes ``renewTime``), so a holder that stopped renewing is seen to age."""
    if previous is not None and previous.record == record:
        return replace(previous, resource_version=resource_version)
    return Observed(record, resource_version, since=now)


def expired(observed: Observed, *, now: float) -> bool:
    """Whether the holder's own ``leaseDurationSeconds`` passed since the record last changed
    (client-go ``isLeaseValid``, inverted). A record without a duration is expired."""
    return now >= observed.since + max(observed.record.duration_s, 0)


def held_by_other(observed: Observed | None, *, identity: str, now: float) -> bool:
    """Whether someone else holds a Lease that has not expired: we may not take it."""
    if observed is None:
        return False
    holder = observed.record.holder
    return bool(holder) and holder != identity and not expired(observed, now=now)


def claim(
    observed: Observed | None,
    *,
    identity: str,
    timings: LeaseTimings,
    now: float,
    wall: datetime,
) -> LeaseRecord | None:
    """The record to write to acquire or renew the Lease, or None while another holder's Lease
    is valid. ``observed`` None means there is no Lease yet (create it)."""
    if held_by_other(observed, identity=identity, now=now):
        return None
    stamp = micro_time(wall)
    fresh = LeaseRecord(identity, timings.lease_duration_s, stamp, stamp, 0)
    if observed is None:
        return fresh
    old = observed.record
    if old.holder == identity:
        return replace(fresh, acquire_time=old.acquire_time or stamp, transitions=old.transitions)
    return replace(fresh, transitions=old.transitions + 1)


def released(observed: Observed | None, *, identity: str, wall: datetime) -> LeaseRecord | None:
    """The record that gives our Lease up (client-go ``release``), or None if it is not ours."""
    if observed is None or observed.record.holder != identity:
        return None
    stamp = micro_time(wall)
    return LeaseRecord("", 1, stamp, stamp, observed.record.transitions)


def must_step_down(last_renewed: float, *, timings: LeaseTimings, now: float) -> bool:
    """Whether a leader has gone ``renew_deadline_s`` without a renewal. ``last_renewed`` is
    when the successful request was *sent*: the server wrote it later, so a standby's clock for
    that record started later still, and the leader stops strictly before it may take over."""
    return now - last_renewed >= timings.renew_deadline_s


def acquire_delay(timings: LeaseTimings, *, random: float) -> float:
    """The wait between two attempts to acquire: the retry period, jittered up by up to 20 %
    (client-go ``wait.JitterUntil`` with ``JitterFactor``), so candidates do not go in step."""
    return timings.retry_period_s * (1 + (JITTER_FACTOR - 1) * min(max(random, 0.0), 1.0))


__all__ = [
    "JITTER_FACTOR",
    "LeaseRecord",
    "LeaseTimings",
    "Observed",
    "acquire_delay",
    "claim",
    "expired",
    "held_by_other",
    "micro_time",
    "must_step_down",
    "observe",
    "released",
]
