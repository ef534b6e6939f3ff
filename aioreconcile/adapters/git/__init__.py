"""Git sources, driven by the git CLI through anyio subprocesses.

``GitCache`` holds one bare repository per URL and a directory per checked-out revision;
``GitSource`` resolves, fetches (shallow, by SHA when a webhook names one), reads and verifies
the commits of one ``GitSourceSpec``; ``poll_forever`` is the fallback when no webhook comes.
Credentials reach git only through its environment (see ``credentials``). See docs/git.md.
"""

from aioreconcile.adapters.git.credentials import CleanUrl, strip_userinfo
from aioreconcile.adapters.git.polling import Wakeup, poll_forever
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
    redact,
    run_git,
)
from aioreconcile.engine.errors import FetchError, VerificationError

__all__ = [
    "CleanUrl",
    "CommitInfo",
    "FetchError",
    "GitCache",
    "GitCommandError",
    "GitError",
    "GitSource",
    "GitTimeoutError",
    "RemoteRef",
    "VerificationError",
    "Wakeup",
    "is_sha",
    "poll_forever",
    "redact",
    "run_git",
    "strip_userinfo",
    "url_key",
]
