"""Fakes for reactor tests: time that moves only when the test says so; a Git source, a cluster
and a renderer that the test steps through (the real ones are tested against real servers)."""

import copy
import heapq
import itertools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import anyio
import anyio.lowlevel

from aioreconcile.engine.applying import ApplyOptions, ApplyResult
from aioreconcile.engine.changes import TreeDiff
from aioreconcile.engine.changeset import Action, ChangeSet, ChangeSetEntry
from aioreconcile.engine.errors import VerificationError
from aioreconcile.engine.manifests import KnownDocuments
from aioreconcile.engine.model import JsonObject, Manifest, ObjectRef
from aioreconcile.engine.naming import SYNC_LABEL
from aioreconcile.engine.planning import stamp
from aioreconcile.engine.sources import RenderSpec


class FakeClock:
    """A ``Clock`` whose ``sleep`` returns only when ``advance`` moves time past its deadline.

    ``advance`` wakes sleepers in deadline order, letting every task run to its next block after
    each wake-up, so a chain of sleeps (a backoff sequence) plays out exactly as in real time.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()
        self.sleeps: list[float] = []  # every positive sleep requested, for assertions

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        self.sleeps.append(seconds)
        woken = anyio.Event()
        entry = (self._now + seconds, next(self._seq), woken)
        heapq.heappush(self._sleepers, entry)
        try:
            await woken.wait()
        finally:
            if not woken.is_set():  # cancelled: forget the sleeper
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    async def advance(self, seconds: float) -> None:
        target = self._now + seconds
        await anyio.wait_all_tasks_blocked()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, woken = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            woken.set()
            await anyio.wait_all_tasks_blocked()
        self._now = target
        await anyio.wait_all_tasks_blocked()

    async def settle(self) -> None:
        """Let every task run until it blocks, without moving time."""
        await anyio.wait_all_tasks_blocked()


class FakeGitSource:
    """A ``GitSource`` whose ref head and history the test sets (the real adapter is tested
    against git servers in tests/git). ``refuse`` makes every commit fail verification, so a
    reconcile stops after the fetch without needing a cluster. ``fetch`` waits for
    ``fetch_gate`` when the test sets one (a slow or hung Git server), setting ``fetching``."""

    def __init__(self, head: str, *, history: Iterable[tuple[str, str]] = ()) -> None:
        self.head = head
        self.history = set(history)  # (ancestor, descendant) pairs
        self.fetches = 0
        self.resolves = 0  # ls-remote calls
        self.refuse = True
        self.fetch_gate: anyio.Event | None = None
        self.fetching = anyio.Event()  # set when a ``fetch`` starts waiting at its gate

    async def resolve(self) -> str:
        self.resolves += 1
        return self.head

    async def fetch(self, *, not_before: float | None = None) -> str:
        self.fetches += 1
        if self.fetch_gate is not None:
            self.fetching.set()
            await self.fetch_gate.wait()
        return self.head

    async def diff(self, old: str, new: str) -> TreeDiff | None:
        return None  # cannot compare: every sync renders (the real diff: tests/git, tests/e2e)

    async def is_ancestor(self, ancestor: str, commit: str) -> bool | None:
        return ancestor == commit or (ancestor, commit) in self.history

    async def verify(self, sha: str) -> None:
        if self.refuse:
            raise VerificationError(f"commit {sha} is not signed")

    async def checkout(self, sha: str) -> Path:
        assert not self.refuse, "a refused commit is never laid out"
        return Path("/commits") / sha  # a FakeRenderer finds the commit's manifests by name

    async def commit_info(self, sha: str) -> tuple[str, str]:
        return ("Ada Author <ada@example.com>", "change")


# --- a cluster, a Git source and a renderer, for reconciles that must interleave exactly --------


def owned_fields(body: JsonObject) -> JsonObject:
    """fieldsV1 owning every map key of ``body`` (enough for the flat objects these tests use)."""
    return {
        f"f:{key}": owned_fields(value) if isinstance(value, dict) and value else {}
        for key, value in body.items()
        if key not in ("apiVersion", "kind")
    }


class FakeCluster:
    """Objects in a dict, written as server-side apply would store them (our managedFields
    entry, a new resourceVersion on every change). ``get`` waits for ``gate`` when the test
    closes it, so a heal that reads can be held between its read and its write;
    ``apply_object`` (a heal's write) waits for ``heal_gate`` before writing, so a heal can be
    held in flight; ``apply`` waits for ``apply_gate`` after writing, so a reconcile can be held
    after its writes. ``reads`` counts the ``get`` calls."""

    def __init__(self) -> None:
        self.objects: dict[ObjectRef, JsonObject] = {}
        self.writes: list[tuple[ObjectRef, str]] = []  # (ref, revision stamped) in write order
        self.gate: anyio.Event | None = None
        self.reading = anyio.Event()  # set when a ``get`` starts waiting at the gate
        self.reads = 0
        self.heal_gate: anyio.Event | None = None
        self.healing = anyio.Event()  # set when an ``apply_object`` starts waiting at its gate
        self.apply_gate: anyio.Event | None = None
        self.applied = anyio.Event()  # set when an ``apply`` starts waiting at its gate
        self._rv = itertools.count(100)

    def is_namespaced(self, ref: ObjectRef) -> bool | None:
        return True

    async def refresh_discovery(self) -> None:
        await anyio.lowlevel.checkpoint()

    def _store(
        self, manifest: Manifest, options: ApplyOptions
    ) -> tuple[ChangeSetEntry, JsonObject]:
        body = stamp(
            manifest.body,
            sync=options.sync,
            revision=options.revision,
            traceparent=options.traceparent,
        )
        before = self.objects.get(manifest.ref)
        rv_before = before["metadata"]["resourceVersion"] if before else None
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(next(self._rv))
        stored["metadata"]["managedFields"] = [
            {
                "manager": options.field_manager,
                "operation": "Apply",
                "apiVersion": body["apiVersion"],
                "fieldsType": "FieldsV1",
                "fieldsV1": owned_fields(body),
            }
        ]
        self.objects[manifest.ref] = stored
        self.writes.append((manifest.ref, options.revision))
        action = Action.CREATED if before is None else Action.CONFIGURED
        entry = ChangeSetEntry(
            manifest.ref,
            action,
            resource_version_before=rv_before,
            resource_version_after=stored["metadata"]["resourceVersion"],
        )
        return entry, copy.deepcopy(stored)

    async def apply(self, manifests: Sequence[Manifest], options: ApplyOptions) -> ApplyResult:
        await anyio.lowlevel.checkpoint()
        entries, live = [], {}
        for manifest in manifests:
            entry, stored = self._store(manifest, options)
            entries.append(entry)
            kept = options.kept(entry, stored)
            if kept is not None:
                live[manifest.ref] = kept
        if self.apply_gate is not None:
            self.applied.set()
            await self.apply_gate.wait()
        return ApplyResult(ChangeSet.of(entries), live)

    async def apply_object(
        self,
        manifest: Manifest,
        options: ApplyOptions,
        *,
        live: JsonObject | None,
        known_changed: bool = False,
    ) -> tuple[ChangeSetEntry, JsonObject | None]:
        if self.heal_gate is not None:
            self.healing.set()
            await self.heal_gate.wait()
        await anyio.lowlevel.checkpoint()
        return self._store(manifest, options)

    async def delete(self, refs: Sequence[ObjectRef], options: ApplyOptions) -> ChangeSet:
        await anyio.lowlevel.checkpoint()
        for ref in refs:
            self.objects.pop(ref, None)
        return ChangeSet.of(ChangeSetEntry(ref, Action.DELETED) for ref in refs)

    async def get(self, ref: ObjectRef) -> JsonObject | None:
        self.reads += 1
        if self.gate is not None:
            self.reading.set()
            await self.gate.wait()
        await anyio.lowlevel.checkpoint()
        obj = self.objects.get(ref)
        return copy.deepcopy(obj) if obj is not None else None

    async def preview(
        self, manifest: Manifest, options: ApplyOptions
    ) -> tuple[JsonObject | None, JsonObject]:
        raise NotImplementedError("not used by the controller")

    async def list_owned(self, kind: ObjectRef, *, sync: str) -> dict[ObjectRef, JsonObject]:
        await anyio.lowlevel.checkpoint()
        return {
            ref: copy.deepcopy(obj)
            for ref, obj in self.objects.items()
            if (ref.group, ref.kind) == (kind.group, kind.kind)
            and ref.namespace == (kind.namespace or ref.namespace)
            and (obj["metadata"].get("labels") or {}).get(SYNC_LABEL) == sync
        }

    async def deletable_kinds(self) -> list[ObjectRef]:
        return sorted({ObjectRef(r.group, r.kind, "", "", r.version) for r in self.objects})

    def edit(self, ref: ObjectRef, change: Callable[[JsonObject], None]) -> JsonObject:
        """Another writer changes the object: a new resourceVersion, the body as edited."""
        obj = self.objects[ref]
        change(obj)
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        return copy.deepcopy(obj)


class FakeRenderer:
    """Renders the manifests the test gave for a commit (found by the tree's directory name)."""

    def __init__(self, commits: dict[str, list[Manifest]]) -> None:
        self.commits = commits

    async def __call__(
        self,
        directory: Path,
        spec: RenderSpec,
        *,
        root: Path | None,
        is_namespaced: Callable[[ObjectRef], bool | None],
        known: KnownDocuments | None = None,
    ) -> list[Manifest]:
        await anyio.lowlevel.checkpoint()
        assert root is not None
        return list(self.commits[root.name])


class NoWatcher:
    """The Watcher port without watches: the test delivers events itself."""

    def __init__(self) -> None:
        self.kinds: set[ObjectRef] = set()

    def watch(self, kinds: Iterable[ObjectRef]) -> None:
        self.kinds = set(kinds)

    async def wait_synced(self) -> None:
        await anyio.lowlevel.checkpoint()
