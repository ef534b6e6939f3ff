"""The result of one reconcile of a sync, and the one Reason per stage that the status
condition, the log line, the exit code and the span status all use."""

from dataclasses import dataclass, field
from enum import StrEnum

from aioreconcile.engine.changeset import ChangeSet
from aioreconcile.engine.health import Health
from aioreconcile.engine.model import JsonObject, ObjectRef


class Reason(StrEnum):
    SUCCEEDED = "ReconciliationSucceeded"
    FETCH_FAILED = "FetchFailed"
    RENDER_FAILED = "RenderFailed"
    APPLY_FAILED = "ApplyFailed"
    PRUNE_FAILED = "PruneFailed"
    INVENTORY_FAILED = "InventoryFailed"
    HEALTH_CHECK_FAILED = "HealthCheckFailed"
    DEPENDENCY_NOT_READY = "DependencyNotReady"  # a dependsOn sync is not Ready yet
    # Applied; waiting for the objects to become healthy (``wait``). Not a result: the health
    # check that follows ends in SUCCEEDED or HEALTH_CHECK_FAILED (Flux's "Progressing").
    PROGRESSING = "Progressing"


@dataclass(frozen=True)
class SyncOutcome:
    """What a reconcile did. ``applied`` and ``pruned`` are the ChangeSets of the two phases;
    ``prune_note`` says why pruning was skipped (failed apply, empty source...)."""

    reason: Reason
    message: str
    revision: str
    applied: ChangeSet = field(default_factory=ChangeSet)
    pruned: ChangeSet = field(default_factory=ChangeSet)
    prune_note: str | None = None
    not_ready: tuple[tuple[ObjectRef, Health], ...] = ()
    inventory_size: int | None = None
    # Each applied object as the server returned it (or as listed, when unchanged): the drift
    # watch compares later events with what the server stored for our fields.
    live: dict[ObjectRef, JsonObject] = field(default_factory=dict, compare=False, repr=False)
    # Whether retrying soon may help; False (a hand-edited inventory, say) waits for the next
    # poll or push instead of retrying with backoff.
    transient: bool = True

    @property
    def ok(self) -> bool:
        return self.reason is Reason.SUCCEEDED

    @property
    def changeset(self) -> ChangeSet:
        return self.applied + self.pruned
