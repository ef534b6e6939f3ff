"""What the reactor asks of a cluster applier, and what it gets back: plain data only."""

from dataclasses import dataclass

from aioreconcile.engine.changeset import ChangeSet
from aioreconcile.engine.model import JsonObject, ObjectRef
from aioreconcile.engine.naming import FIELD_MANAGER


@dataclass(frozen=True)
class ApplyOptions:
    """How to apply: who we are (sync, revision, trace) and how hard to push."""

    sync: str  # a valid label value naming the owning sync
    revision: str
    traceparent: str | None = None
    force_conflicts: bool = True
    dry_run: bool = False
    concurrency: int = 16
    field_manager: str = FIELD_MANAGER
    settle_timeout_s: float = 60.0


@dataclass(frozen=True)
class ApplyResult:
    changeset: ChangeSet
    live: dict[ObjectRef, JsonObject]  # each object as the server holds it after the apply
