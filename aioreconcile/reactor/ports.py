"""What the reactor needs from the outside world, as Protocols. Adapters implement them; the
composition root passes them in; unit tests pass fakes through the same constructors."""

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from aioreconcile.engine.applying import ApplyOptions, ApplyResult
from aioreconcile.engine.changes import TreeDiff
from aioreconcile.engine.changeset import ChangeSet, ChangeSetEntry
from aioreconcile.engine.config import DataRef, ReceiverSpec, SyncSpec
from aioreconcile.engine.inventory import Inventory
from aioreconcile.engine.manifests import KnownDocuments
from aioreconcile.engine.model import JsonObject, Manifest, ObjectRef
from aioreconcile.engine.sources import RenderSpec


class Cluster(Protocol):
    """One Kubernetes API server, as the reconcile loop uses it."""

    def is_namespaced(self, ref: ObjectRef) -> bool | None: ...

    async def refresh_discovery(self) -> None: ...

    async def apply(self, manifests: Sequence[Manifest], options: ApplyOptions) -> ApplyResult: ...

    async def delete(self, refs: Sequence[ObjectRef], options: ApplyOptions) -> ChangeSet: ...

    async def get(self, ref: ObjectRef) -> JsonObject | None: ...

    async def preview(
        self, manifest: Manifest, options: ApplyOptions
    ) -> tuple[JsonObject | None, JsonObject]:
        """(live or None, the object as our apply would store it: a server-side dry-run)."""
        ...

    async def apply_object(
        self,
        manifest: Manifest,
        options: ApplyOptions,
        *,
        live: JsonObject | None,
        known_changed: bool = False,
    ) -> tuple[ChangeSetEntry, JsonObject | None]:
        """Apply one object whose live state the caller already has: no LIST, no staging.
        ``known_changed`` (a declared value differs) skips the pure check and the dry-run."""
        ...

    async def list_owned(self, kind: ObjectRef, *, sync: str) -> dict[ObjectRef, JsonObject]:
        """Every object of ``kind`` (its group, version and kind) in ``kind.namespace`` (every
        namespace when empty; the name is unused) labelled as ``sync``'s: the listing the apply
        reads live state with."""
        ...

    async def deletable_kinds(self) -> list[ObjectRef]:
        """Every kind the cluster serves that can be listed and deleted, in its preferred
        version, as refs without name or namespace (as of the last discovery refresh)."""
        ...


class ManifestRenderer(Protocol):
    """Turns a directory of a checked-out revision into manifests (plain, kustomize, helm);
    ``is_namespaced`` (from discovery) lets it default namespaces; ``known`` (the documents of
    the last render) spares it the parse of documents whose text did not change."""

    async def __call__(
        self,
        directory: Path,
        spec: RenderSpec,
        *,
        root: Path | None,
        is_namespaced: Callable[[ObjectRef], bool | None],
        known: KnownDocuments | None = None,
    ) -> list[Manifest]: ...


class InventoryStore(Protocol):
    key: str
    """``<namespace>/<name>`` of where it is kept: stamped on every object the sync applies
    (``INVENTORY_ANNOTATION``), so a rebuild from labels takes only its own objects."""

    async def load(self) -> Inventory | None: ...

    async def save(self, inventory: Inventory, *, revision: str) -> None: ...


class GitSource(Protocol):
    """One sync's Git source: resolve its ref, fetch the ref's head, verify a commit, lay out
    its tree.

    ``fetch`` takes no SHA on purpose: a sync applies the head of its ref as the Git server
    holds it when fetched, never a commit a webhook named (Flux and Argo CD treat a webhook as
    "look now" the same way). A delivery's SHA stays a hint for logs and traces."""

    async def resolve(self) -> str:
        """The ref's head on the server now (``ls-remote``, nothing fetched): a cheap poll."""
        ...

    async def fetch(self, *, not_before: float | None = None) -> str:
        """Fetch the ref itself; returns the commit it pointed at when the server answered.

        ``not_before`` (``time.monotonic()`` when the caller's trigger arrived): a fetch of the
        same repository and ref that started at or after it may answer instead, so the syncs
        one push triggers share one fetch."""
        ...

    async def diff(self, old: str, new: str) -> TreeDiff | None:
        """The paths changed between two fetched commits and the symbolic links of ``new``;
        None when they cannot be compared."""
        ...

    async def is_ancestor(self, ancestor: str, commit: str) -> bool | None:
        """Whether ``commit`` builds on ``ancestor`` (both fetched); None: cannot tell."""
        ...

    async def verify(self, sha: str) -> None: ...

    async def checkout(self, sha: str) -> Path: ...

    async def commit_info(self, sha: str) -> tuple[str, str]:
        """Author and subject of a fetched commit (for the trace's root span)."""
        ...


class Watcher(Protocol):
    """Watches managed objects of the given kinds and reports their events to the reactor."""

    def watch(self, kinds: Iterable[ObjectRef]) -> None:
        """Keep watches open for exactly the kinds of these refs (version, group, kind)."""
        ...

    async def wait_synced(self) -> None:
        """Return once every watched kind has done its first LIST (events after it are seen)."""
        ...


class Elector(Protocol):
    """A leader election (a Lease, ``adapters.kube.leasing``): only its leader may write."""

    identity: str

    @property
    def leading(self) -> bool: ...

    @property
    def holder(self) -> str:
        """The holder last seen ("" when none or unknown)."""
        ...

    async def acquire(self) -> None:
        """Return once this candidate leads."""
        ...

    async def hold(self) -> None:
        """Keep renewing; return once leadership is lost (``leading`` is then False)."""
        ...

    async def release(self) -> bool:
        """Give leadership up at once so a standby need not wait for expiry; never raises."""
        ...


class SyncResourceClient(Protocol):
    """The Sync custom resources as CRD mode writes them: status, finalizer, Events, and what
    a deleted Sync leaves behind. Every method raises AioreconcileError on failure."""

    async def write_status(self, namespace: str, name: str, status: JsonObject) -> None:
        """Merge-patch the status subresource (never the spec: no new generation)."""
        ...

    async def set_finalizer(self, namespace: str, name: str, *, present: bool) -> None: ...

    async def record_event(self, namespace: str, name: str, event: JsonObject) -> None:
        """Create an events.k8s.io/v1 Event regarding the Sync (``event``: reason, note,
        type, action, series)."""
        ...

    async def release(self, refs: Sequence[ObjectRef], *, sync: str) -> int:
        """Remove our labels from these objects (a Sync deleted with ``prune: false``), as
        far as they still carry ``sync``'s label; returns how many were released."""
        ...

    async def delete_inventory(self, namespace: str, name: str) -> None: ...

    async def write_receiver_status(
        self, namespace: str, name: str, status: JsonObject
    ) -> None: ...

    async def read_data(self, ref: DataRef) -> Mapping[str, bytes] | None:
        """A Secret's or ConfigMap's data now (None: it does not exist)."""
        ...


class ReconcileRequester(Protocol):
    """Records a "reconcile now" on a Sync object, where whoever reconciles it will see it."""

    async def request_reconcile(self, namespace: str, name: str, patch: JsonObject) -> bool:
        """Merge-patch the Sync's metadata with ``patch``; False when the Sync is gone.
        Raises AioreconcileError when it could not be written."""
        ...


class ReceiverRoutes(Protocol):
    """The webhook listener's table of receivers, changed while it serves."""

    def serve(self, key: str, spec: ReceiverSpec, secret: bytes) -> None: ...

    def stop(self, key: str) -> None: ...


class SyncParts(Protocol):
    """Builds what the controller needs for one sync (CRD mode): its Git source (credentials
    read through the Kubernetes API), its inventory store and, with a service account, its
    impersonating cluster."""

    def source(self, spec: SyncSpec) -> GitSource: ...

    def inventory(self, namespace: str, name: str) -> InventoryStore: ...

    def cluster(self, spec: SyncSpec) -> Cluster | None: ...
