"""Why work happens. Every trigger becomes a key on the work queue (see docs/architecture.md).

A webhook delivery is first normalised into a provider-independent ``PushEvent``; matching it
against the configured sources (``engine.matching``) yields ``Push`` triggers with the exact SHA.
"""

from dataclasses import dataclass, field
from enum import StrEnum

from aioreconcile.engine.model import ObjectRef


class RefType(StrEnum):
    BRANCH = "branch"
    TAG = "tag"


@dataclass(frozen=True)
class PushedCommit:
    sha: str
    message: str = ""
    author: str = ""


@dataclass(frozen=True)
class PushEvent:
    """One push, whatever the provider.

    ``repository_urls`` holds every URL the provider gave for the repository (clone URL, SSH URL,
    web URL), so a source written in any of those forms matches. ``after`` is the new head SHA;
    for a deletion it is all zeros and ``deleted`` is true (a deletion never triggers a sync,
    so it can never prune everything).
    """

    provider: str
    delivery_id: str
    repository_urls: tuple[str, ...]
    ref: str  # full ref name, e.g. refs/heads/main or refs/tags/v1.2.0
    before: str
    after: str
    created: bool = False
    deleted: bool = False
    forced: bool = False
    commits: tuple[PushedCommit, ...] = ()
    traceparent: str | None = None  # W3C trace context of the delivery, when the sender gave one

    @property
    def ref_type(self) -> RefType | None:
        if self.ref.startswith("refs/heads/"):
            return RefType.BRANCH
        if self.ref.startswith("refs/tags/"):
            return RefType.TAG
        return None

    @property
    def ref_name(self) -> str:
        """``main`` for ``refs/heads/main``, ``v1`` for ``refs/tags/v1``."""
        return self.ref.split("/", 2)[2] if self.ref.count("/") >= 2 else self.ref


@dataclass(frozen=True)
class Push:
    """A webhook named this SHA for this sync: fetch exactly it, skip any poll wait."""

    sync: str
    sha: str
    event: PushEvent | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Poll:
    """The sync's interval came round (or the process started): resolve its ref, apply if new."""

    sync: str


@dataclass(frozen=True)
class SpecChanged:
    """The sync's own definition changed (config reload, CRD edit)."""

    sync: str


@dataclass(frozen=True)
class Drift:
    """A managed object was changed or deleted by someone else."""

    sync: str
    ref: ObjectRef


Trigger = Push | Poll | SpecChanged | Drift
