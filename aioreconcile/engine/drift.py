"""Did a watched object drift from what its sync applied? Decided from data alone.

Drift is judged on what the server stored for our fields, never on the manifest as written:
``cpu: 1`` is stored as ``"1"``, ``0.5`` as ``500m``, a port gains ``protocol: TCP``, and
comparing the manifest would take every status update for drift. The controller keeps, per
object, ``planning.as_stored`` of our own apply's response (our managed fields only) and each
event is compared with it by ``planning.differences``, the comparison planning uses too. A field
owned by someone else (an HPA's ``replicas``, a defaulted field, ``status``, another manager's
annotation) never makes an object drifted, so we never fight another controller over a field we
do not set. Our own writes are also recognised by the resourceVersion our apply returned.
"""

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.model import JsonObject, ObjectRef
from aioreconcile.engine.naming import DISABLED, FIELD_MANAGER, RECONCILE_ANNOTATION
from aioreconcile.engine.planning import differences, opted_out


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


def differing_fields(stored: JsonObject, live: JsonObject | None) -> list[str]:
    """Paths of our fields whose live value differs from what the server stored for us
    (``data.key``, ``spec.template.spec.containers[name=web].image``); ``.`` when deleted."""
    return differences(stored, live)


def judge(
    event: WatchEvent,
    desired: JsonObject | None,
    *,
    stored: JsonObject | None,
    our_resource_version: str | None,
    field_manager: str = FIELD_MANAGER,
) -> DriftVerdict:
    """The verdict for one watch event against what its sync's last apply stored.

    ``stored`` is ``planning.as_stored`` of our apply's response; without it (the apply failed
    or was skipped) only a deletion counts. A DELETED event from our label-selected watch also
    comes for an object that merely lost our label: the heal reads it back and restores it.
    """
    if desired is None:
        return DriftVerdict(DriftKind.NONE, "no sync declares this object")
    if opted_out(desired, event.object):
        return DriftVerdict(DriftKind.OPTED_OUT, f"annotated {RECONCILE_ANNOTATION}: {DISABLED}")
    if event.type is EventType.DELETED:
        return DriftVerdict(DriftKind.DELETED, "deleted, or no longer labelled as ours")
    if our_resource_version is not None and event.resource_version == our_resource_version:
        return DriftVerdict(DriftKind.NONE, "our own write")
    if stored is None:
        return DriftVerdict(DriftKind.NONE, "not applied by us yet")
    fields = tuple(differences(stored, event.object))
    if not fields:
        return DriftVerdict(DriftKind.NONE, "only fields we do not declare changed")
    writers = foreign_writers(event.object, field_manager=field_manager)
    reason = f"changed {', '.join(fields)}"
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
