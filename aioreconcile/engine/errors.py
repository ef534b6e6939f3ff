"""Our error hierarchy. Adapters map library exceptions to these (``raise ... from e``) so the
reactor and the CLI decide on retries and messages without knowing any client library."""

from dataclasses import dataclass, field


class AioreconcileError(Exception):
    """Base of every error we raise on purpose."""


class TransientError(AioreconcileError):
    """Worth retrying: the server was unreachable, overloaded or timed out."""


@dataclass
class ApiError(AioreconcileError):
    """The API server answered with an error status; ``message`` is the server's own words."""

    status: int
    reason: str
    message: str
    causes: tuple[tuple[str, str], ...] = field(default=(), kw_only=True)
    """(field, message) of each ``details.causes`` entry of the server's Status (422 Invalid
    names every refused field there)."""

    def __str__(self) -> str:
        return f"{self.reason or 'Error'} ({self.status}): {self.message}"

    @property
    def transient(self) -> bool:
        return self.status == 429 or self.status >= 500


class NotFoundError(ApiError):
    """404: the object (or its kind) is not there."""


class ConflictError(ApiError):
    """409: a conflict (field manager, resourceVersion or AlreadyExists)."""


class UnknownKindError(AioreconcileError):
    """The cluster serves no resource for an apiVersion/kind, even after refreshing discovery."""


class FetchError(AioreconcileError):
    """Fetching from a Git source failed. The message names the repository (credentials
    stripped) and the end of git's stderr, redacted, so it can go to a status or a log as is.

    A git call that ran out of time is a ``FetchError`` that is also a ``TransientError``
    (``adapters.git.GitTimeoutError``): the reactor retries it with backoff.
    """


class InventoryError(AioreconcileError, ValueError):
    """A stored inventory cannot be read (hand-edited, truncated); the message names the entry
    and what is wrong with it. Retrying does not help: a person has to fix or delete it."""


class VerificationError(AioreconcileError):
    """A commit's signature did not verify against the configured keys; it is never applied.
    The message names the commit and git's reason."""


class SourcePathMissing(AioreconcileError):
    """The commit has no directory at the source's ``path``. Final for that commit (a commit
    never changes): reported once, in the user's terms, and not retried until another commit.
    """


class LeadershipLost(AioreconcileError):
    """The leader could not renew its Lease within the renew deadline, or saw another holder:
    it has stopped writing. The controller exits (non-zero) and comes back as a standby, as
    controller-runtime's managers do."""
