"""Git sources, driven by the git CLI through anyio subprocesses.

``GitCache`` holds one bare repository per URL and a directory per checked-out revision;
``GitSource`` resolves, fetches (shallow, by SHA when a webhook names one), reads and verifies
the commits of one ``GitSourceSpec`` (polling is the reactor's: it enqueues a poll per interval).
Credentials reach git only through its environment (see ``credentials``). See docs/git.md.
"""

from aioreconcile.adapters.git.repository import (
    CommitInfo,
    GitCache,
    GitSource,
    RemoteRef,
    is_sha,
    url_key,
)
from aioreconcile.adapters.git.running import (
    GitCommandError,
    GitError,
    GitTimeoutError,
    run_git,
)
from aioreconcile.engine.errors import FetchError, VerificationError

__all__ = [
    "CommitInfo",
    "FetchError",
    "GitCache",
    "GitCommandError",
    "GitError",
    "GitSource",
    "GitTimeoutError",
    "RemoteRef",
    "VerificationError",
    "is_sha",
    "run_git",
    "url_key",
]
