"""The controller's own JSON log lines (``aioreconcile.logs``) read back as the demo's events.

The live view and the guided tour show what the controller says it did, never a second
computation of it: a commit's counts come from the ``totals`` of its ``reconciled`` line, its
webhook->applied time from the timestamps of the receiver's ``webhook push`` line and that
``reconciled`` line, a heal's fields and writers from the ``drift healed`` line (as
``flux events`` and ``argocd app get --watch`` show what their controllers recorded). Pure:
lines in, events out, so it is tested with plain strings.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson


@dataclass(frozen=True)
class CommitApplied:
    """A reconcile of a commit that succeeded (``reconciled``)."""

    sha: str
    created: int
    configured: int
    pruned: int
    unchanged: int
    latency_ms: float | None  # webhook received -> reconcile recorded; None: no webhook (poll)
    trace_id: str | None
    at: datetime


@dataclass(frozen=True)
class CommitFailed:
    """A reconcile that failed (``reconcile failed``): the reason and the controller's error."""

    sha: str | None
    reason: str
    error: str
    pruned: int
    latency_ms: float | None
    trace_id: str | None
    at: datetime


@dataclass(frozen=True)
class DriftHealed:
    """A foreign write undone (``drift healed``)."""

    object: str
    writers: tuple[str, ...]
    fields: tuple[str, ...]
    latency_ms: float | None  # drift detected -> healed, from the controller's two lines
    trace_id: str | None
    linked_trace_id: str | None  # the commit trace that last set the object
    at: datetime


Event = CommitApplied | CommitFailed | DriftHealed


def trace_id_of(traceparent: object) -> str | None:
    """The trace id of a W3C ``traceparent`` (``00-<trace id>-<span id>-<flags>``)."""
    if not isinstance(traceparent, str):
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def _time(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(entry.get("time", "1970-01-01T00:00:00.000Z")))


def _ms(start: datetime | None, end: datetime) -> float | None:
    return None if start is None else max(0.0, (end - start).total_seconds() * 1000)


def _count(totals: object, key: str) -> int:
    if not isinstance(totals, dict):
        return 0
    value = totals.get(key, 0)
    return value if isinstance(value, int) else 0


def _strings(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


@dataclass
class LogReader:
    """Feed it log lines in order; it returns the events they complete."""

    webhooks: dict[str, datetime] = field(default_factory=dict)  # sha -> first delivery
    detected: dict[str, datetime] = field(default_factory=dict)  # object -> first detection

    def feed(self, line: str) -> list[Event]:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            return []  # not one of the controller's lines (a traceback, a tool's stderr)
        if not isinstance(entry, dict):
            return []
        message = str(entry.get("message", ""))
        at = _time(entry)
        if message.startswith("webhook push") and isinstance(entry.get("sha"), str):
            self.webhooks.setdefault(entry["sha"], at)
        elif message == "drift detected" and isinstance(entry.get("object"), str):
            self.detected.setdefault(entry["object"], at)
        elif message == "drift healed" and isinstance(entry.get("object"), str):
            obj = entry["object"]
            return [
                DriftHealed(
                    object=obj,
                    writers=_strings(entry.get("writers")),
                    fields=_strings(entry.get("fields")),
                    latency_ms=_ms(self.detected.pop(obj, None), at),
                    # Logged inside the heal's span: log correlation adds its trace id.
                    trace_id=_optional(entry.get("trace_id")),
                    linked_trace_id=trace_id_of(entry.get("linked_traceparent")),
                    at=at,
                )
            ]
        elif message == "reconciled" and isinstance(entry.get("revision"), str):
            sha = entry["revision"]
            totals = entry.get("totals")
            return [
                CommitApplied(
                    sha=sha,
                    created=_count(totals, "created"),
                    configured=_count(totals, "configured"),
                    pruned=_count(totals, "deleted"),
                    unchanged=_count(totals, "unchanged"),
                    latency_ms=_ms(self.webhooks.pop(sha, None), at),
                    trace_id=_optional(entry.get("trace_id")),
                    at=at,
                )
            ]
        elif message == "reconcile failed":
            sha = _optional(entry.get("revision"))
            return [
                CommitFailed(
                    sha=sha,
                    reason=str(entry.get("reason", "")),
                    error=str(entry.get("error") or ""),
                    pruned=_count(entry.get("totals"), "deleted"),
                    latency_ms=_ms(self.webhooks.pop(sha, None) if sha else None, at),
                    trace_id=_optional(entry.get("trace_id")),
                    at=at,
                )
            ]
        return []


def _optional(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
