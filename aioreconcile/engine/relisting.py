"""What changed while a watch was not looking: a fresh LIST against the watch's small cache.

A watch that falls too far behind gets 410 Gone and must list again. The events it missed are
lost, so we compare the cache (object -> resourceVersion, nothing else) with the listing and make
up the events: that is enough for drift detection, which re-reads what it needs. A resourceVersion
is opaque; only equality is meaningful, so "changed" means "differs", never "is greater".
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.model import JsonObject, ObjectRef


@dataclass(frozen=True)
class ListingDiff:
    """Refs by what happened to them meanwhile, each sorted so the events come out stable.

    An object deleted and re-created under the same name shows up as ``modified``: its
    resourceVersion differs, and a re-check is exactly what drift detection wants then too.
    """

    added: tuple[ObjectRef, ...] = ()
    modified: tuple[ObjectRef, ...] = ()
    deleted: tuple[ObjectRef, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.modified or self.deleted)


def diff_listing(cached: Mapping[ObjectRef, str], listed: Mapping[ObjectRef, str]) -> ListingDiff:
    """Compare two ``ref -> resourceVersion`` maps: the cache before, the listing now."""
    return ListingDiff(
        added=tuple(sorted(ref for ref in listed if ref not in cached)),
        modified=tuple(
            sorted(ref for ref, rv in listed.items() if ref in cached and cached[ref] != rv)
        ),
        deleted=tuple(sorted(ref for ref in cached if ref not in listed)),
    )


def tombstone(ref: ObjectRef) -> JsonObject:
    """The least object a DELETED event can carry when we never saw the deletion: its identity.

    Nothing else is known (the cache keeps no bodies), and nothing else is needed to decide
    whether to re-create it.
    """
    metadata: dict[str, str] = {"name": ref.name}
    if ref.namespace:
        metadata["namespace"] = ref.namespace
    return {"apiVersion": ref.api_version, "kind": ref.kind, "metadata": metadata}


def synthetic_events(diff: ListingDiff, bodies: Mapping[ObjectRef, JsonObject]) -> list[WatchEvent]:
    """The made-up events for ``diff``: ADDED, then MODIFIED, then DELETED.

    ``bodies`` must hold the listed object of every added and modified ref (a KeyError says the
    caller dropped one); deletions get a ``tombstone``.
    """
    events: list[WatchEvent] = []
    for kind, refs in ((EventType.ADDED, diff.added), (EventType.MODIFIED, diff.modified)):
        events.extend(WatchEvent(kind, ref, bodies[ref], synthetic=True) for ref in refs)
    events.extend(
        WatchEvent(EventType.DELETED, ref, tombstone(ref), synthetic=True) for ref in diff.deleted
    )
    return events


def relist_events(
    cached: Mapping[ObjectRef, str], listed: Iterable[tuple[ObjectRef, JsonObject]]
) -> list[WatchEvent]:
    """``diff_listing`` + ``synthetic_events`` in one step for callers holding whole objects."""
    bodies = dict(listed)
    versions = {
        ref: str((body.get("metadata") or {}).get("resourceVersion", ""))
        for ref, body in bodies.items()
    }
    return synthetic_events(diff_listing(cached, versions), bodies)
