"""Why work happens. Every trigger becomes a key on the work queue (see docs/architecture.md).

A webhook delivery is first normalised into a provider-independent ``PushEvent``; matching it
against the syncs its receiver may trigger (``engine.matching``) yields ``Push`` triggers. The
SHA a ``Push`` carries is a hint, never an order: the reactor applies the ref's head as the Git
server reports it (Flux and Argo CD treat a webhook as "look now" the same way).
"""

import re
from dataclasses import dataclass, field
from enum import StrEnum

from aioreconcile.engine.model import ObjectRef

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def is_traceparent(value: object) -> bool:
    """Whether ``value`` has the shape of a W3C ``traceparent`` (version-trace id-span id-flags,
    lowercase hex): the one check of a trace context from outside (a header, an annotation)."""
    return isinstance(value, str) and _TRACEPARENT.fullmatch(value) is not None


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
    web URL), so a source written in any of those forms matches. ``after`` is the new head SHA
    the sender claims; for a deletion it is all zeros, and an all-zero ``after`` makes
    ``deleted`` true whatever the payload's flag said (a deletion never triggers a sync, so it
    can never prune everything).
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
    # W3C trace contexts, as the receiver saw the delivery. ``traceparent``: the parent of the
    # reconcile, only when the sender gave a trace to continue (a CI pipeline), else None.
    # ``link_traceparent``: the webhook request's span, when the reconcile starts a trace of its
    # own and only links to it (no provider sends a traceparent). docs/tracing.md says why.
    traceparent: str | None = None
    link_traceparent: str | None = None

    def __post_init__(self) -> None:
        if is_zero_sha(self.after) and not self.deleted:
            object.__setattr__(self, "deleted", True)

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


def is_zero_sha(sha: str) -> bool:
    """The all-zero id (40 or 64 digits) Git servers send for a ref that does not exist."""
    return bool(sha) and not sha.strip("0")


@dataclass(frozen=True)
class Push:
    """A webhook said this sync's ref moved: look at the ref now, skip any poll wait.

    ``sha`` is what the delivery claimed the new head is: a hint for logs and traces, never
    what gets applied (a holder of a receiver secret, or a replayer of an old signed delivery,
    could name any commit the server holds)."""

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
