"""What one reconcile did, as plain data: logs, status, metrics, CLI output and spans read it."""

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from aioreconcile.engine.model import ObjectRef


class Action(StrEnum):
    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"
    DELETED = "deleted"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class ChangeSetEntry:
    ref: ObjectRef
    action: Action
    error: str | None = None
    duration_s: float = 0.0
    resource_version_before: str | None = None
    resource_version_after: str | None = None
    started_at: float | None = None  # wall clock (time.time()) when the work on it began


@dataclass(frozen=True)
class ChangeSet:
    entries: tuple[ChangeSetEntry, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, entries: Iterable[ChangeSetEntry]) -> "ChangeSet":
        return cls(tuple(entries))

    def __add__(self, other: "ChangeSet") -> "ChangeSet":
        return ChangeSet(self.entries + other.entries)

    @property
    def failed(self) -> tuple[ChangeSetEntry, ...]:
        return tuple(e for e in self.entries if e.action is Action.FAILED)

    @property
    def ok(self) -> bool:
        return not self.failed

    def totals(self) -> dict[Action, int]:
        """Count per action, every action present (zeros included) for stable output."""
        counts = Counter(e.action for e in self.entries)
        return {action: counts.get(action, 0) for action in Action}
