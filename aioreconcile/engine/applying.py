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
    # Called once per object the server returned (written, or found as declared) as soon as
    # it is in, after a stage's CRDs or Namespaces settled; what it returns is what
    # ``ApplyResult.live`` keeps of that object (None: nothing). The controller keeps only its
    # stored form: 10,000 full responses (managedFields and all) held until the apply ended
    # were most of its peak, and the allocator kept that peak (docs/controller-benchmarks.md).
    # Never part of equality.
    on_live: Callable[[ChangeSetEntry, JsonObject], JsonObject | None] | None = field(
        default=None, compare=False
    )

    # The stamped body this sync last applied for a ref (None: unknown, as after a restart),
    # for ``planning.decide``: an object whose declaration changed since is applied without a
    # dry-run first. Asked only when the answer would otherwise be a dry-run. Never part of
    # equality.
    last_applied: Callable[[ObjectRef], JsonObject | None] | None = field(
        default=None, compare=False
    )

    # The resourceVersion our last write left on an object, when the caller knows that every
    # change to it since was ours (its watch saw no drift, deletion or opt-out); None: not
    # known. Such an object whose declaration changed (``planning.changed_since`` the
    # ``last_applied`` body) is applied without a LIST or GET first: the read could only
    # confirm what the watch already said. Never part of equality.
    as_left: Callable[[ObjectRef], str | None] | None = field(default=None, compare=False)

    def kept(self, entry: ChangeSetEntry, obj: JsonObject | None) -> JsonObject | None:
        """What an ``ApplyResult`` keeps of ``obj``, returned for ``entry`` (``on_live``)."""
        if obj is None or self.on_live is None:
            return obj
        return self.on_live(entry, obj)


@dataclass(frozen=True)
class ApplyResult:
    changeset: ChangeSet
    live: dict[ObjectRef, JsonObject]  # each object as the server holds it after the apply
