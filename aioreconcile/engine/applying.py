"""What the reactor asks of a cluster applier, and what it gets back: plain data only."""

from collections.abc import Callable
from dataclasses import dataclass, field

from aioreconcile.engine.changeset import ChangeSet, ChangeSetEntry
from aioreconcile.engine.model import JsonObject, ObjectRef
from aioreconcile.engine.naming import FIELD_MANAGER


@dataclass(frozen=True)
class ApplyOptions:
    """How to apply: who we are (sync, revision, trace) and how hard to push."""

    sync: str  # a valid label value naming the owning sync
    revision: str
    # ``<namespace>/<name>`` of the sync's inventory, stamped on every object (INVENTORY_ANNOTATION)
    inventory: str | None = None
    traceparent: str | None = None
    force_conflicts: bool = True
    dry_run: bool = False
    concurrency: int = 16
    field_manager: str = FIELD_MANAGER
    settle_timeout_s: float = 60.0
    # Called once per object as it finishes (CLI progress, metrics); never part of equality.
    on_entry: Callable[[ChangeSetEntry], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ApplyResult:
    changeset: ChangeSet
    live: dict[ObjectRef, JsonObject]  # each object as the server holds it after the apply
