"""What a watch reports, as plain data: the reactor turns these into Drift triggers."""

from dataclasses import dataclass
from enum import StrEnum

from aioreconcile.engine.model import JsonObject, ObjectRef


class EventType(StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class WatchEvent:
    """One change of a managed object. ``synthetic`` marks events made up after a relist
    (410 Gone, reconnect) for changes that happened while we were not watching."""

    type: EventType
    ref: ObjectRef
    object: JsonObject
    synthetic: bool = False

    @property
    def resource_version(self) -> str:
        return str((self.object.get("metadata") or {}).get("resourceVersion", ""))
