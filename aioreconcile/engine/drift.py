"""Did a watched object drift from what its sync applied? Decided from data alone.

Only what we declared counts: a field owned by someone else (an HPA's ``replicas``, a defaulted
field, ``status``) never makes an object drifted, so we never fight another controller over a
field we do not set. Our own writes are recognised by the resourceVersion our apply returned.
"""

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.model import JsonObject, ObjectRef
from aioreconcile.engine.naming import DISABLED, FIELD_MANAGER, RECONCILE_ANNOTATION
from aioreconcile.engine.planning import VOLATILE_ANNOTATIONS, Decision, decide


class DriftKind(StrEnum):
    NONE = "none"
    CHANGED = "changed"
    DELETED = "deleted"
    OPTED_OUT = "opted-out"


@dataclass(frozen=True)
class DriftVerdict:
    kind: DriftKind
    reason: str
    writers: tuple[str, ...] = ()  # other field managers, most recent first
    fields: tuple[str, ...] = ()  # paths of declared fields whose live value differs

    @property
    def drifted(self) -> bool:
        return self.kind in (DriftKind.CHANGED, DriftKind.DELETED)


def _annotations(obj: JsonObject) -> dict[str, Any]:
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    return annotations if isinstance(annotations, dict) else {}


def foreign_writers(live: JsonObject, *, field_manager: str = FIELD_MANAGER) -> tuple[str, ...]:
    """Field managers other than ours on ``live``, most recent write first."""
    metadata = live.get("metadata")
    entries = metadata.get("managedFields") if isinstance(metadata, dict) else None
    others = [
        (str(e.get("time") or ""), str(e.get("manager") or "?"))
        for e in entries or []
        if isinstance(e, dict) and e.get("manager") != field_manager
    ]
    ordered = [manager for _, manager in sorted(others, reverse=True)]
    return tuple(dict.fromkeys(ordered))


def differing_fields(desired: object, live: object, path: str = "") -> list[str]:
    """Paths of values we declare that live holds differently (``data.key``, ``spec.replicas``).
    Lists are compared whole; volatile stamps are skipped."""
    if isinstance(desired, dict) and isinstance(live, dict):
        found: list[str] = []
        for key, value in desired.items():
            child = f"{path}.{key}" if path else str(key)
            if path == "metadata.annotations" and key in VOLATILE_ANNOTATIONS:
                continue
            if key not in live:
                found.append(child)
            else:
                found += differing_fields(value, live[key], child)
        return found
    return [] if desired == live and type(desired) is type(live) else [path or "."]


def judge(
    event: WatchEvent,
    desired: JsonObject | None,
    *,
    our_resource_version: str | None,
    field_manager: str = FIELD_MANAGER,
) -> DriftVerdict:
    """The verdict for one watch event against the object its sync last applied."""
    if desired is None:
        return DriftVerdict(DriftKind.NONE, "no sync declares this object")
    if _annotations(desired).get(RECONCILE_ANNOTATION) == DISABLED or (
        _annotations(event.object).get(RECONCILE_ANNOTATION) == DISABLED
    ):
        return DriftVerdict(DriftKind.OPTED_OUT, f"annotated {RECONCILE_ANNOTATION}: {DISABLED}")
    if event.type is EventType.DELETED:
        return DriftVerdict(DriftKind.DELETED, "deleted by someone else")
    if our_resource_version is not None and event.resource_version == our_resource_version:
        return DriftVerdict(DriftKind.NONE, "our own write")
    decision = decide(desired, event.object, field_manager=field_manager)
    if decision is Decision.UNCHANGED:
        return DriftVerdict(DriftKind.NONE, "only fields we do not declare changed")
    fields = tuple(differing_fields(desired, event.object))
    writers = foreign_writers(event.object, field_manager=field_manager)
    if decision is Decision.VERIFY and not fields:
        # The values we declare are all there (a server-normalised form, say): nothing to heal.
        return DriftVerdict(DriftKind.NONE, "declared values unchanged")
    reason = f"changed {', '.join(fields) or 'fields we own'}"
    if writers:
        reason += f" (by {writers[0]})"
    return DriftVerdict(DriftKind.CHANGED, reason, writers, fields)


_FIGHT_LIMIT: Final = 5
_FIGHT_WINDOW_S: Final = 60.0
_FIGHT_COOLDOWN_S: Final = 30.0
_FIGHT_COOLDOWN_CAP_S: Final = 600.0


@dataclass
class FightGuard:
    """Stops us fighting another writer: more than ``limit`` heals of one object within
    ``window_s`` pauses healing it for a cooldown that doubles while the fight goes on."""

    limit: int = _FIGHT_LIMIT
    window_s: float = _FIGHT_WINDOW_S
    cooldown_s: float = _FIGHT_COOLDOWN_S
    cooldown_cap_s: float = _FIGHT_COOLDOWN_CAP_S
    _heals: dict[ObjectRef, deque[float]] = field(default_factory=dict)
    _paused_until: dict[ObjectRef, tuple[float, float]] = field(default_factory=dict)

    def allow(self, ref: ObjectRef, *, now: float) -> tuple[bool, float]:
        """May we heal ``ref`` now? If not, also how many seconds until we may."""
        paused = self._paused_until.get(ref)
        if paused is not None and now < paused[0]:
            return False, paused[0] - now
        heals = self._heals.setdefault(ref, deque())
        while heals and now - heals[0] > self.window_s:
            heals.popleft()
        if len(heals) >= self.limit:
            previous = paused[1] if paused is not None else 0.0
            cooldown = min(self.cooldown_cap_s, previous * 2 if previous else self.cooldown_s)
            self._paused_until[ref] = (now + cooldown, cooldown)
            heals.clear()
            return False, cooldown
        heals.append(now)
        if paused is not None and now >= paused[0] + self.window_s:
            # A whole window of peace after the pause: the next fight starts from scratch.
            self._paused_until.pop(ref, None)
        return True, 0.0

    def forget(self, ref: ObjectRef) -> None:
        self._heals.pop(ref, None)
        self._paused_until.pop(ref, None)
