"""A local cache of Git sources: one bare repository per URL, fetched shallow, and a directory
per revision holding that commit's tree for rendering.

Layout under the cache root::

    repos/<key>.git        bare repository; remote "origin" is the URL without credentials;
                           refs/aioreconcile/<full ref> holds the last fetched head of each ref
    trees/<key>/<sha>/     the files of one commit (the newest ``keep_trees`` are kept)
    home/                  HOME of every git process (empty: no user configuration)
    gnupg/<hash>/          GNUPGHOME holding an imported keyring, for GPG verification
    askpass.sh             prints credentials from the child's environment (mode 0700)

``<key>`` is ``sha256(url)[:16]`` of the URL without credentials, so no secret is ever part of
a path. Network calls share one global limit; each repository has its own lock, so a hung server
holds only its own repository (until the call's time limit) and at most one slot of the limit.

Syncs of one repository and ref share a fetch of its head: ``fetch(not_before=t)`` returns the
head of the last fetch of that ref that *started* at or after ``t`` (the moment the sync's
trigger arrived) instead of fetching again; the server answered that fetch after the push the
trigger announced, so its head is as new as a fetch of the sync's own would have been. A fetch
that started earlier is never reused, even if it finished later: its ref advertisement may
predate the push. The lock serialises fetches of a repository, so the syncs that a delivery
triggers wait for the first one's fetch and then all take its head: one fetch per push.
"""

import hashlib
import logging
import os
import re
import secrets
import shutil
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Final, NamedTuple

import anyio

from aioreconcile.adapters.git.credentials import (
    DataReader,
    GitCredentials,
    credentials_from_data,
    resolve_credentials,
    write_askpass,
)
from aioreconcile.adapters.git.running import (
    GitCommandError,
    GitTimeoutError,
    run_command,
    run_git,
)
from aioreconcile.engine.changes import TreeDiff
from aioreconcile.engine.config import AuthKind, GitAuth, GitSourceSpec, VerifyMode
from aioreconcile.engine.errors import (
    AioreconcileError,
    FetchError,
    SourcePathMissing,
    VerificationError,
)
from aioreconcile.engine.metrics import Counter, Registry
from aioreconcile.engine.redaction import SplitUrl, redact_url, split_userinfo

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENT: Final = 4
DEFAULT_KEEP_TREES: Final = 3
DEEPEN_BY: Final = 100
LOW_SPACE_BYTES: Final = 64 * 1024  # below this, a failed write is taken for a full disk
_ENOSPC: Final = os.strerror(28)  # "No space left on device", as git prints it
_FETCHED_REF: Final = "refs/aioreconcile/fetched"
_HEADS: Final = "refs/aioreconcile/"  # + the full ref name: the last fetched head of that ref
_REPOSITORY: Final = Path("<the cached repository>")  # default of GitSource._local
_SHA: Final = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_ANSWERS_KEPT: Final = 256
_SYMLINK_MODE: Final = "120000"
# Per fetch: the pack kept as it came (one index-pack, not a loose object file per object:
# ~20 ms less for a 50-file commit); no FETCH_HEAD (nothing reads it).
# gc.bigPackThreshold: with a pack per fetch, ``gc --auto`` repacks once there are more than
# gc.autoPackLimit (50) packs; packs over 16 MiB (a large repository's first, shallow fetch)
# are kept out of that repack, so its cost stays that of the last ~50 pushes' objects.
_FETCH_CONFIG: Final = ("-c", "fetch.unpackLimit=1", "-c", "gc.bigPackThreshold=16m")
# git fetch runs ``git maintenance run --auto`` after each fetch: one process more per push,
# nearly always to find nothing to do. Let it on the first fetch of a repository in this
# process and then every HOUSEKEEPING_EVERY-th (it still packs loose objects and packs at git's
# thresholds, a few fetches later at most).
HOUSEKEEPING_EVERY: Final = 16
_FETCH_OPTIONS: Final = ("--no-tags", "--no-write-fetch-head")
# The head's id, parents, author and subject, in one process right after its fetch.
_HEAD_FORMAT: Final = "--format=%H%x00%P%x00%an <%ae>%x00%s"


class HeadFetch(NamedTuple):
    """The last fetch of one ref of one repository: when it started (``time.monotonic()``)
    and the head it brought."""

    started: float
    sha: str


class CommitInfo(NamedTuple):
    """Who wrote a commit and its first line, for traces and status."""

    author: str
    subject: str


Answer = bool | TreeDiff | CommitInfo | frozenset[str]


class RemoteRef(NamedTuple):
    """A ref on the server and the commit it points at (tags peeled)."""

    name: str
    sha: str


def is_sha(ref: str) -> bool:
    """Whether ``ref`` is a full commit id (SHA-1 or SHA-256), which is used as is."""
    return bool(_SHA.match(ref.lower()))


def url_key(url: str) -> str:
    """The cache directory name of a repository: a hash of the URL without credentials."""
    normalised = split_userinfo(url).url.rstrip("/")
    return hashlib.sha256(normalised.encode()).hexdigest()[:16]


class GitCache:
    """Bare repositories and revision trees under ``root``, shared by every source.

    ``config`` is passed as ``-c key=value`` to every git call (for example a CA bundle); it
    is on argv, so it must hold no secret.
    """

    def __init__(
        self,
        root: Path,
        *,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        keep_trees: int = DEFAULT_KEEP_TREES,
        config: Mapping[str, str] | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.root = root.absolute()
        self.max_concurrent = max_concurrent
        self.keep_trees = max(1, keep_trees)
        self.config = dict(config or {})
        self._locks: dict[str, anyio.Lock] = {}
        self._limiter: anyio.CapacityLimiter | None = None
        self._askpass: Path | None = None
        # (repository key, configured ref, credentials) -> the last fetch of its head.
        self.heads: dict[tuple[str, str, GitAuth, str], HeadFetch] = {}
        self.head_fetches = Counter(
            "aioreconcile_git_head_fetches_total",
            "Heads of a ref asked for by a sync: fetched from the server, or shared (answered "
            "by another sync's fetch of the same ref that started after its trigger).",
            ["result"],
            registry=registry if registry is not None else Registry(),
        )
        # Answers about commits, by id (they cannot change), oldest first: is-ancestor and
        # diff of a pair, author and subject ("commit") and symbolic links ("links") of one.
        self.answers: OrderedDict[tuple[str, str, str, str], Answer] = OrderedDict()
        # Questions being asked of git now, by the same key as ``answers``.
        self.asking: dict[tuple[str, str, str, str], anyio.Event] = {}
        # Fetches of each repository by this process (``HOUSEKEEPING_EVERY``).
        self.fetches: dict[str, int] = {}
        # (repository key, local ref) fetched by this process: the next fetch is incremental.
        self.fetched_refs: set[tuple[str, str]] = set()

    def forget(self, key: str) -> None:
        """Drop what is remembered of one repository (it was created again: empty)."""
        for memo in [m for m in self.answers if m[1] == key]:
            del self.answers[memo]
        self.fetched_refs = {r for r in self.fetched_refs if r[0] != key}

    @property
    def home(self) -> Path:
        return self.root / "home"

    def out_of_space(self, error: str) -> str | None:
        """Why a git call failed, when the cause is the cache's disk: ``error`` says ENOSPC, or
        less than ``LOW_SPACE_BYTES`` is left on the filesystem holding the cache (git's
        checkout reports only "unable to write file"). Names the directory and what is free,
        so whoever reads the status knows which disk to grow or clean; None otherwise."""
        try:
            disk = os.statvfs(self.root)
        except OSError:
            return None
        free, size = disk.f_bavail * disk.f_frsize, disk.f_blocks * disk.f_frsize
        if _ENOSPC not in error and free >= LOW_SPACE_BYTES:
            return None
        return (
            f"the disk of the git cache {self.root} is full "
            f"({free // 1024} KiB free of {size // 1024} KiB)"
        )

    def source(self, spec: GitSourceSpec, *, data: DataReader | None = None) -> "GitSource":
        """``data`` reads the Secrets and ConfigMaps a CRD-mode spec refers to."""
        return GitSource(spec, cache=self, data=data)

    def lock(self, key: str) -> anyio.Lock:
        """The lock of one repository; created on first use (inside the event loop)."""
        if key not in self._locks:
            self._locks[key] = anyio.Lock()
        return self._locks[key]

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        """How many network calls run at once, over all repositories."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.max_concurrent)
        return self._limiter

    def prepare(self) -> Path:
        """Create the root, the private HOME and the askpass script (once); returns the
        script."""
        if self._askpass is not None and self._askpass.exists():
            return self._askpass
        for directory in (self.root, self.home, self.root / "repos", self.root / "trees"):
            directory.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self._askpass = write_askpass(self.root)
        return self._askpass


class GitSource:
    """One ``GitSourceSpec`` backed by the cache: resolve a ref, fetch a commit, read its tree,
    verify its signature."""

    def __init__(
        self, spec: GitSourceSpec, *, cache: GitCache, data: DataReader | None = None
    ) -> None:
        self.spec = spec
        self.cache = cache
        self._data = data
        self.remote: SplitUrl = split_userinfo(spec.url)
        self._shown = redact_url(spec.url)
        self.key = url_key(spec.url)
        self.repository = cache.root / "repos" / f"{self.key}.git"
        self.trees = cache.root / "trees" / self.key
        verify = spec.verify
        # Absolute now: git runs elsewhere, and the files are read at each verification.
        self._signers = (
            Path(verify.allowed_signers_file).absolute() if verify.allowed_signers_file else None
        )
        self._keyring = Path(verify.keyring_file).absolute() if verify.keyring_file else None
        self._ref_name: str | None = None  # spec.ref's full name, once the server told it
        # Whose fetches of the head this source may take: same repository and ref, and the same
        # credentials (by reference, and the URL as written, userinfo included, hashed), so a
        # sync never sees a head fetched with access it was not given.
        self._head_key = (
            self.key,
            spec.ref,
            spec.auth,
            hashlib.sha256(spec.url.encode()).hexdigest(),
        )

    @property
    def url(self) -> str:
        """The repository URL as it may be shown: without credentials (``redact_url``)."""
        return self._shown

    async def resolve(self) -> str:
        """The commit ``spec.ref`` points at on the server now (``ls-remote``, no fetch)."""
        if is_sha(self.spec.ref):
            return self.spec.ref.lower()
        return (await self.remote_ref()).sha

    async def remote_ref(self) -> RemoteRef:
        """The full name and commit of ``spec.ref``: a branch wins over a tag of the same name;
        an annotated tag is peeled to its commit."""
        ref = self.spec.ref
        candidates = [ref] if ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
        patterns = [p for c in candidates for p in (c, f"{c}^{{}}")]
        output = await self._network(
            ["ls-remote", "--", self.remote.url, *patterns],
            doing=f"listing {ref!r}",
            in_repository=False,
        )
        advertised: dict[str, str] = {}
        for line in output.decode("utf-8", errors="replace").splitlines():
            sha, _, name = line.partition("\t")
            advertised[name.strip()] = sha.strip()
        for name in candidates:
            found = advertised.get(f"{name}^{{}}") or advertised.get(name)
            if found:
                self._ref_name = name
                return RemoteRef(name, found)
        self._ref_name = None
        raise FetchError(f"{self.url} has no branch or tag named {ref!r}")

    async def fetch(self, sha: str | None = None, *, not_before: float | None = None) -> str:
        """Make a commit present in the cache and return its SHA: without ``sha``, the head of
        ``spec.ref`` as the server holds it at this moment (what a sync applies); with ``sha``,
        that known commit (a pinned ref, a tree to lay out again, tests).

        The head is taken by fetching the ref itself, never by asking for an id named
        elsewhere: a webhook's SHA, a commit under ``refs/pull/*`` or a dangling object are all
        served by id (protocol v2 serves any object it holds), so fetching by id would apply
        whatever a sender names. See ``_fetch_head``.

        ``not_before`` (a ``time.monotonic()`` value: when the caller's trigger arrived) lets
        a fetch of the same ref that started at or after it answer instead (see the module).
        """
        async with self.cache.lock(self.key):
            await self._ensure_repository()
            if sha is None:
                if not is_sha(self.spec.ref):
                    head = self._head_key
                    last = self.cache.heads.get(head)
                    if not_before is not None and last is not None and last.started >= not_before:
                        self.cache.head_fetches.labels(result="shared").inc()
                        return last.sha
                    started = time.monotonic()
                    self.cache.head_fetches.labels(result="fetched").inc()
                    fetched = await self._fetch_head()
                    self.cache.heads[head] = HeadFetch(started, fetched)
                    return fetched
                sha = self.spec.ref
            return await self._fetch_commit(sha.lower(), ref=None)

    async def diff(self, old: str, new: str) -> TreeDiff | None:
        """The paths that differ between two fetched commits (``git diff-tree -r``, raw) and
        the symbolic links of ``new``; None when the cache lacks ``old`` (shallow, or another
        history), so nothing can be said. Kept per pair: the syncs of a push ask the same, at
        once (one of them asks git). ``new``'s links are ``old``'s carried through the diff
        when ``old``'s are known (``_carried_links``), else listed by ``ls-tree`` beside it."""
        if not (is_sha(old) and is_sha(new)):
            raise ValueError("diff compares full commit ids")
        memo = ("diff", self.key, old.lower(), new.lower())
        answer = await self._asked_once(memo, partial(self._diff, memo))
        return answer if isinstance(answer, TreeDiff) else None

    async def _diff(self, memo: tuple[str, str, str, str]) -> TreeDiff | None:
        if not self.repository.is_dir():
            return None
        old_links = self.cache.answers.get(("links", self.key, memo[2], ""))
        raw_diff = ["diff-tree", "-r", "-z", "--no-renames", memo[2], memo[3], "--"]
        listing: bytes | None = None
        try:  # no lock, as is_ancestor
            if isinstance(old_links, frozenset):
                raw = await self._local(raw_diff)
            else:  # the older commit's links unknown: list the newer one's beside the diff
                raw, listing = await self._local_together(
                    raw_diff, ["ls-tree", "-r", "-z", "--full-tree", memo[3]]
                )
        except GitCommandError:
            return None  # a commit the cache does not hold
        changes = _raw_changes(raw)
        changed = tuple(path for path, _ in changes)
        if listing is not None:
            links = frozenset(
                entry.partition("\t")[2]
                for entry in listing.decode("utf-8", "surrogateescape").split("\0")
                if entry.startswith(_SYMLINK_MODE + " ")
            )
        else:
            assert isinstance(old_links, frozenset)
            links = _carried_links(old_links, changes)
        result = TreeDiff(changed, links)
        self._remember(("links", self.key, memo[3], ""), links)
        self._remember(memo, result)
        return result

    async def is_ancestor(self, ancestor: str, commit: str) -> bool | None:
        """Whether ``commit`` is ``ancestor`` or builds on it (``git merge-base --is-ancestor``);
        None when the cache does not hold ``ancestor``, so nothing can be said.

        Both must have come through ``fetch()``: its incremental fetches keep the history
        between successive heads of a ref, so a fast-forward is always seen as one. A false
        answer means the ref moved back or was rewritten (or, rarely, that a shallow boundary of
        another ref's fetch cut the path: then it is a rewind only for the count and the log).
        """
        if not (is_sha(ancestor) and is_sha(commit)):
            raise ValueError("is_ancestor compares full commit ids")
        memo = ("is-ancestor", self.key, ancestor.lower(), commit.lower())
        answer = await self._asked_once(memo, partial(self._is_ancestor, memo))
        return answer if isinstance(answer, bool) else None

    async def _is_ancestor(self, memo: tuple[str, str, str, str]) -> bool | None:
        # No lock: a read of immutable objects, safe beside a fetch (git's readers never see a
        # half-written pack); the syncs of one push ask this together.
        if not self.repository.is_dir():
            return None
        try:
            await self._local(["merge-base", "--is-ancestor", memo[2], memo[3]])
        except GitCommandError as e:
            if e.returncode != 1:
                return None  # 128: a commit the cache does not hold (not remembered)
            self._remember(memo, False)
            return False
        self._remember(memo, True)
        return True

    async def _asked_once(
        self,
        memo: tuple[str, str, str, str],
        ask: Callable[[], Awaitable[Answer | None]],
    ) -> Answer | None:
        """The remembered answer, else ``ask()``'s. The syncs of one push ask the same pair at
        once, right after the shared fetch: the first asks git, the others wait for its answer
        instead of each starting the same processes (a single flight, as Go's
        ``x/sync/singleflight``)."""
        while True:
            if memo in self.cache.answers:
                return self.cache.answers[memo]
            asking = self.cache.asking.get(memo)
            if asking is None:
                break
            await asking.wait()  # then remembered, or nothing was (None): ask ourselves
        done = anyio.Event()
        self.cache.asking[memo] = done
        try:
            return await ask()
        finally:
            del self.cache.asking[memo]
            done.set()

    def _remember(self, memo: tuple[str, str, str, str], answer: Answer) -> None:
        """Keep the answer about two commits: it cannot change (the ids name the content)."""
        self.cache.answers[memo] = answer
        while len(self.cache.answers) > _ANSWERS_KEPT:
            self.cache.answers.popitem(last=False)

    async def checkout(self, sha: str) -> Path:
        """The directory holding the files of commit ``sha`` (fetched first if missing); raises
        SourcePathMissing, naming the path, the repository and the commit (never a directory
        of this cache), when the commit has no directory at the source's ``path``."""
        tree = await self._lay_out(sha)
        if not await anyio.Path(tree / self.spec.path).is_dir():
            raise SourcePathMissing(
                f"path `{self.spec.path}` not found in {self.url} at {sha.lower()[:7]}"
            )
        return tree

    async def _lay_out(self, sha: str) -> Path:
        """The directory holding the files of commit ``sha`` (fetched first if missing).

        Written into a temporary directory and renamed, so a directory that exists is complete;
        reused while present. Only the ``keep_trees`` most recently used ones are kept: a
        render still reading an older one should hold a newer revision by the time it goes.
        """
        sha = sha.lower()
        target = self.trees / sha
        if target.is_dir():
            os.utime(target)
            return target
        async with self.cache.lock(self.key):
            if target.is_dir():
                os.utime(target)
                return target
            await self._ensure_repository()
            if not self._fetched_head(sha) and not await self._has_commit(sha):
                await self._fetch_commit(sha, ref=None)
            self.trees.mkdir(parents=True, exist_ok=True)
            token = secrets.token_hex(4)
            staging = self.trees / f".tmp-{sha}-{token}"
            index = self.trees / f".tmp-{sha}-{token}.index"
            staging.mkdir()
            try:
                # One process: read the tree into a private index and write its files
                # (``read-tree -u``; was read-tree, then checkout-index).
                env = {**self._local_env(), "GIT_INDEX_FILE": str(index)}
                await self._local(
                    [f"--work-tree={staging}", "read-tree", "--reset", "-u", sha],
                    env=env,
                    cwd=staging,
                )
                staging.rename(target)
            except GitCommandError as e:
                self.cache.answers.pop(("commit", self.key, sha, ""), None)  # checked next time
                # Judged before the half-written tree is removed: that frees the disk again.
                full = self.cache.out_of_space(str(e))
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_remove, staging)
                if full is None:
                    raise
                raise FetchError(
                    f"laying out commit {sha} of {self.url} failed: {full}: {e.stderr}"
                ) from e
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_remove, staging)
                raise
            finally:
                index.unlink(missing_ok=True)
            await self._prune_trees(keep=target)
        logger.debug("checked out %s of %s", sha, self.url)
        return target

    async def verify(self, sha: str) -> None:
        """Raise VerificationError unless ``sha``'s signature verifies against the configured
        GPG keyring or SSH allowed signers; nothing to do when verification is off."""
        mode = self.spec.verify.mode
        if mode is VerifyMode.NONE:
            return
        sha = sha.lower()
        async with self.cache.lock(self.key):
            await self._ensure_repository()
            if not self._fetched_head(sha) and not await self._has_commit(sha):
                await self._fetch_commit(sha, ref=None)
            try:
                header = await self._local(["cat-file", "commit", sha])
            except GitCommandError:
                self.cache.answers.pop(("commit", self.key, sha, ""), None)  # checked next time
                raise
            if not re.search(rb"^gpgsig(-sha256)? ", header.split(b"\n\n", 1)[0], re.M):
                raise VerificationError(f"commit {sha} of {self.url} is not signed")
            env = self._local_env()
            if mode is VerifyMode.SSH:
                signers = self._signers or await self._signers_from_data()
                if signers is None:
                    raise VerificationError("ssh verification needs allowedSignersFile")
                args = [
                    "-c",
                    "gpg.format=ssh",
                    "-c",
                    f"gpg.ssh.allowedSignersFile={signers}",
                    "verify-commit",
                    sha,
                ]
            else:
                env["GNUPGHOME"] = str(await self._gnupg_home())
                args = ["verify-commit", sha]
            try:
                await self._local(args, env=env)
            except GitCommandError as e:
                raise VerificationError(
                    f"commit {sha} of {self.url} failed {mode} signature verification: {e.stderr}"
                ) from None
        logger.info("commit %s of %s: %s signature verified", sha, self.url, mode)

    async def commit_info(self, sha: str) -> CommitInfo:
        """Author (``Name <email>``) and subject of a fetched commit; a head is read with its
        fetch."""
        known = self.cache.answers.get(("commit", self.key, sha.lower(), ""))
        if isinstance(known, CommitInfo):
            return known
        output = await self._local(
            ["log", "-1", "--no-show-signature", "--format=%an <%ae>%x00%s", sha.lower(), "--"]
        )
        author, _, subject = output.decode("utf-8", errors="replace").rstrip("\n").partition("\0")
        return CommitInfo(author, subject)

    # --- internals ----------------------------------------------------------------------------

    async def _fetch_head(self) -> str:
        """Fetch ``spec.ref`` itself into ``refs/aioreconcile/<full name>`` and return the
        commit it points at (an annotated tag peeled), with the repository lock held.

        The result is the ref's head at the moment the server answered, whatever moved before
        or after: there is no window between resolving and fetching. The first fetch of a ref
        is shallow (``--depth=1``); later ones are incremental (no depth: the server sends the
        commits since the previous head, which stays a "have"), so the path from one applied
        head to the next is in the cache and ``is_ancestor`` can tell a rewind. A rewind or a
        rewrite costs, once, the new head's history that the cache lacks.
        """
        name = self._ref_name or (await self.remote_ref()).name
        local = f"{_HEADS}{name}"
        fetched = (self.key, local)
        incremental = fetched in self.cache.fetched_refs or await self._has_ref(local)
        depth = [] if incremental else ["--depth=1"]
        try:
            await self._network(
                [
                    *self._fetch_config(),
                    "fetch",
                    *depth,
                    *_FETCH_OPTIONS,
                    "--",
                    "origin",
                    f"+{name}:{local}",
                ],
                doing=name,
            )
        except FetchError:
            self._ref_name = None  # deleted, or a branch became a tag: ask the server again
            raise
        self.cache.fetched_refs.add(fetched)
        # The head and what the reactor asks of it next, in one process: its author and
        # subject, and its parents (a push of one commit on the applied one is a fast-forward
        # without a merge-base process).
        output = await self._local(
            [
                "log",
                "-1",
                "--no-show-signature",
                _HEAD_FORMAT,
                "--end-of-options",
                f"{local}^{{commit}}",
                "--",
            ]
        )
        sha, parents, author, subject = (
            output.decode("utf-8", errors="replace").rstrip("\n").split("\0", 3)
        )
        self._remember(("commit", self.key, sha, ""), CommitInfo(author, subject))
        for parent in parents.split():
            self._remember(("is-ancestor", self.key, parent, sha), True)
        return sha

    def _fetched_head(self, sha: str) -> bool:
        """Whether ``sha`` is a head this process fetched (its author and subject were read
        then): present, so ``checkout`` and ``verify`` skip their ``cat-file -e`` (Argo CD's
        repo-server asks ``git cat-file -t`` before each fetch and checkout). Forgotten when
        the repository is created again, or when laying it out fails."""
        return ("commit", self.key, sha, "") in self.cache.answers

    def _fetch_config(self) -> list[str]:
        """``-c`` options of one fetch: the pack kept, and git's housekeeping only on every
        ``HOUSEKEEPING_EVERY``-th fetch of the repository."""
        count = self.cache.fetches.get(self.key, 0)
        self.cache.fetches[self.key] = count + 1
        if count % HOUSEKEEPING_EVERY == 0:
            return [*_FETCH_CONFIG]
        return [*_FETCH_CONFIG, "-c", "maintenance.auto=false"]

    async def _has_ref(self, ref: str) -> bool:
        try:
            await self._local(["rev-parse", "--verify", "--quiet", ref])
        except GitCommandError:
            return False
        return True

    async def _fetch_commit(self, sha: str, *, ref: str | None) -> str:
        """Fetch ``sha`` with the repository lock held; ``ref`` is where it is reachable from,
        when known, for the fallback."""
        refspec = f"+{sha}:{_FETCHED_REF}"
        try:
            await self._network(
                [
                    *self._fetch_config(),
                    "fetch",
                    "--depth=1",
                    *_FETCH_OPTIONS,
                    "--",
                    "origin",
                    refspec,
                ],
                doing=f"commit {sha}",
            )
        except FetchError as e:
            if isinstance(e, GitTimeoutError):
                raise
            logger.info("fetching %s from %s by id failed, fetching the ref: %s", sha, self.url, e)
            if ref is None:
                if is_sha(self.spec.ref):
                    raise
                ref = (await self.remote_ref()).name
            await self._fetch_reachable(sha, ref=ref)
        if not await self._has_commit(sha):
            raise FetchError(f"{self.url} did not send commit {sha}")
        return sha

    async def _fetch_reachable(self, sha: str, *, ref: str) -> None:
        """Fetch ``ref`` shallow, then deeper, then whole, until ``sha`` is present."""
        refspec = f"+{ref}:{_FETCHED_REF}"
        for depth in ("--depth=1", f"--deepen={DEEPEN_BY}", "--unshallow"):
            if depth != "--depth=1" and not (self.repository / "shallow").exists():
                break
            await self._network(
                [*self._fetch_config(), "fetch", depth, *_FETCH_OPTIONS, "--", "origin", refspec],
                doing=ref,
            )
            if await self._has_commit(sha):
                return
        raise FetchError(f"commit {sha} is not reachable from {ref} in {self.url}")

    async def _has_commit(self, sha: str) -> bool:
        try:
            await self._local(["cat-file", "-e", f"{sha}^{{commit}}"])
        except GitCommandError:
            return False
        return True

    async def _ensure_repository(self) -> None:
        if self.repository.is_dir():
            return
        self.cache.forget(self.key)  # nothing of a repository that was removed holds
        self.cache.prepare()
        staging = self.repository.with_name(f".tmp-{self.key}-{secrets.token_hex(4)}")
        try:
            await self._local(["init", "--bare", "--quiet", str(staging)], git_dir=None)
            for key, value in (
                ("remote.origin.url", self.remote.url),
                ("gc.autoDetach", "false"),
                ("core.logAllRefUpdates", "false"),
            ):
                await self._local(["config", "--", key, value], git_dir=staging)
            staging.rename(self.repository)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove, staging)
            raise

    async def _keys_from_data(self) -> Mapping[str, bytes]:
        """The verification keys of a CRD-mode spec, read now from its Secret or ConfigMap."""
        ref = self.spec.verify.keys
        if ref is None or self._data is None:
            raise VerificationError("verification keys are by reference but no reader was given")
        try:
            data = await self._data(ref)
        except AioreconcileError as e:
            raise VerificationError(f"the {ref} with the trusted keys cannot be read: {e}") from e
        if not data:
            raise VerificationError(f"the {ref} with the trusted keys does not exist or is empty")
        return data

    async def _signers_from_data(self) -> Path | None:
        """git reads allowed signers from a file: public keys, kept by content."""
        if self.spec.verify.keys is None:
            return None
        data = await self._keys_from_data()
        content = data.get("allowed_signers")
        if content is None:
            raise VerificationError(f"the {self.spec.verify.keys} has no allowed_signers key")
        path = self.cache.root / "signers" / hashlib.sha256(content).hexdigest()[:16]
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".tmp-{secrets.token_hex(4)}")
            temporary.write_bytes(content)
            temporary.replace(path)
        return path

    async def _gnupg_home(self) -> Path:
        """A private GNUPGHOME with the keyring imported, keyed by the keyring's content."""
        keyring = self._keyring
        blocks: list[bytes]
        if keyring is not None:
            try:
                blocks = [await anyio.Path(keyring).read_bytes()]
            except OSError as e:
                raise VerificationError(
                    f"the keyring {keyring} cannot be read: {e.strerror}"
                ) from None
            shown = str(keyring)
        elif self.spec.verify.keys is not None:
            blocks = [v for _, v in sorted((await self._keys_from_data()).items())]
            shown = str(self.spec.verify.keys)
        else:
            raise VerificationError("gpg verification needs keyringFile")
        home = self.cache.root / "gnupg" / hashlib.sha256(b"\0".join(blocks)).hexdigest()[:16]
        if home.is_dir():
            return home
        staging = home.with_name(f".tmp-{home.name}-{secrets.token_hex(4)}")
        staging.mkdir(parents=True, mode=0o700)
        # Trust is decided by which keys are in this keyring, not by gpg's web of trust. The
        # keys become the legacy pubring.gpg instead of being imported: an import wants
        # gpg-agent, whose socket path under a deep cache root is too long. Each block (a
        # keyring file, or each data key of a Secret/ConfigMap) is dearmored on its own.
        (staging / "gpg.conf").write_text("trust-model always\nno-autostart\n")
        try:
            binary: list[bytes] = []
            for index, content in enumerate(blocks):
                if content.lstrip().startswith(b"-----BEGIN PGP"):
                    armored = staging / f"block-{index}.asc"
                    armored.write_bytes(content)
                    dearmor = ["gpg", "--batch", "--quiet", "--dearmor"]
                    await run_command(
                        [*dearmor, "-o", f"block-{index}.gpg", armored.name],
                        cwd=staging,
                        env={"HOME": str(self.cache.home), "GNUPGHOME": str(staging)},
                        time_limit=self.spec.timeout_s,
                    )
                    binary.append((staging / f"block-{index}.gpg").read_bytes())
                else:
                    binary.append(content)
            (staging / "pubring.gpg").write_bytes(b"".join(binary))
            staging.rename(home)
        except GitCommandError as e:
            raise VerificationError(f"the keyring {shown} cannot be read by gpg: {e}") from None
        finally:
            if staging.exists():
                await anyio.to_thread.run_sync(_remove, staging)
        return home

    async def _prune_trees(self, *, keep: Path) -> None:
        """Remove all but the newest ``keep_trees`` revisions, and leftovers of crashes."""
        entries = [p for p in self.trees.iterdir() if p != keep]
        leftovers = [p for p in entries if p.name.startswith(".tmp-")]
        revisions = sorted(
            (p for p in entries if is_sha(p.name) and p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for path in [*revisions[self.cache.keep_trees - 1 :], *leftovers]:
            logger.debug("removing %s", path)
            await anyio.to_thread.run_sync(_remove, path)

    def _local_env(self) -> dict[str, str]:
        return {"HOME": str(self.cache.home)}

    def _config_args(self) -> list[str]:
        return [arg for k, v in self.cache.config.items() for arg in ("-c", f"{k}={v}")]

    async def _local(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        git_dir: Path | None = _REPOSITORY,
    ) -> bytes:
        """A git command that needs no network, on the cached repository unless ``git_dir``
        names another one (or None: no repository)."""
        directory = self.repository if git_dir is _REPOSITORY else git_dir
        prefix = [f"--git-dir={directory}"] if directory is not None else []
        try:
            return await run_git(
                [*self._config_args(), *prefix, *args],
                cwd=cwd,
                env=env if env is not None else self._local_env(),
                time_limit=self.spec.timeout_s,
            )
        except GitTimeoutError as e:
            raise GitTimeoutError(f"{self.url}: {e}") from None

    async def _local_together(self, *commands: Sequence[str]) -> list[bytes]:
        """The outputs of local git commands run at the same time; the first failure (in the
        order given) is raised as it is, not wrapped in an exception group."""
        outputs: list[bytes | AioreconcileError] = [b""] * len(commands)

        async def run(index: int) -> None:
            try:
                outputs[index] = await self._local(commands[index])
            except AioreconcileError as e:
                outputs[index] = e

        async with anyio.create_task_group() as group:
            for index in range(len(commands)):
                group.start_soon(run, index)
        for output in outputs:
            if isinstance(output, AioreconcileError):
                raise output
        return [o for o in outputs if isinstance(o, bytes)]

    async def _network(
        self, args: Sequence[str], *, doing: str, in_repository: bool = True
    ) -> bytes:
        """A git command that talks to the server: within the global limit, with credentials
        in the environment only; every failure becomes a FetchError naming the repository."""
        prefix = [f"--git-dir={self.repository}"] if in_repository else []
        async with self._credentials() as credentials, self.cache.limiter:
            env = {**self._local_env(), **credentials.env}
            try:
                return await run_git(
                    [*self._config_args(), *prefix, *args],
                    cwd=None,
                    env=env,
                    time_limit=self.spec.timeout_s,
                    secrets=credentials.secrets,
                )
            except GitTimeoutError as e:
                raise GitTimeoutError(f"{doing} from {self.url}: {e}") from None
            except GitCommandError as e:
                full = self.cache.out_of_space(e.stderr)
                detail = e.stderr if full is None else f"{full}: {e.stderr}"
                raise FetchError(f"{doing} from {self.url} failed: {detail}") from None

    @asynccontextmanager
    async def _credentials(self) -> AsyncIterator[GitCredentials]:
        """The credentials for one call, read now; ssh key files written for a Secret's
        identity live only as long as the call."""
        askpass = self.cache.prepare()
        auth = self.spec.auth
        if auth.kind is not AuthKind.SECRET:
            yield resolve_credentials(auth, self.remote, askpass=askpass)
            return
        if auth.secret is None or self._data is None:
            raise FetchError("the git credentials are in a Secret but no reader was given")
        data = await self._data(auth.secret)
        directory = self.cache.root / "ssh" / secrets.token_hex(8)

        def ssh_files(identity: bytes, known_hosts: bytes) -> tuple[Path, Path]:
            directory.mkdir(parents=True, mode=0o700)
            key, hosts = directory / "identity", directory / "known_hosts"
            for path, content in ((key, identity), (hosts, known_hosts)):
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "wb") as file:
                    file.write(content if content.endswith(b"\n") else content + b"\n")
            return key, hosts

        try:
            yield credentials_from_data(
                auth.secret, data, self.remote, askpass=askpass, ssh_files=ssh_files
            )
        finally:
            if directory.exists():
                await anyio.to_thread.run_sync(_remove, directory)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _raw_changes(raw: bytes) -> list[tuple[str, str]]:
    """``git diff-tree -r -z`` (raw, no renames) as (path, new mode) pairs; mode "000000" for a
    path the newer commit lacks."""
    fields = raw.decode("utf-8", "surrogateescape").split("\0")
    changes: list[tuple[str, str]] = []
    for header, path in zip(fields[0::2], fields[1::2], strict=False):
        if header.startswith(":"):
            changes.append((path, header[1:].split(" ")[1]))
    return changes


def _carried_links(old: frozenset[str], changes: Sequence[tuple[str, str]]) -> frozenset[str]:
    """The symbolic links of the newer commit from the older one's and the raw diff between
    them: a path the diff does not name is the same entry in both."""
    named = {path for path, _ in changes}
    return frozenset(
        {link for link in old if link not in named}
        | {path for path, mode in changes if mode == _SYMLINK_MODE}
    )
