"""The Kubernetes adapter as the reactor sees it (the ``Cluster`` port): one transport, one
discovery cache, one applier, opened and closed together; and, per sync with a service
account, a view that makes every object request as that account over the same pool."""

from collections.abc import Iterable, Sequence
from pathlib import Path

from aioreconcile.adapters.kube.applying import Applier
from aioreconcile.adapters.kube.discovery import Discovery, Resource
from aioreconcile.adapters.kube.transport import KubeTransport
from aioreconcile.adapters.kube.watching import WatchManager
from aioreconcile.engine.applying import ApplyOptions, ApplyResult
from aioreconcile.engine.changeset import ChangeSet, ChangeSetEntry
from aioreconcile.engine.config import ServiceAccountRef
from aioreconcile.engine.model import JsonObject, Manifest, ObjectRef


class KubeCluster:
    def __init__(self, transport: KubeTransport, *, discovery: Discovery | None = None) -> None:
        self.transport = transport
        self.discovery = discovery if discovery is not None else Discovery(transport)
        self.applier = Applier(transport, self.discovery)

    def impersonating(self, account: ServiceAccountRef) -> "KubeCluster":
        """This cluster as ``account``: every GET, LIST, apply, dry-run and DELETE of objects
        impersonates it, over the same connection pool. Discovery stays shared and is read
        with the controller's identity (which kinds exist is no secret, and the account may
        not be allowed to list the CRDs that define them). Closing the view closes nothing."""
        return KubeCluster(
            self.transport.impersonating(account.user, account.groups), discovery=self.discovery
        )

    @classmethod
    async def connect(
        cls,
        kubeconfig: Path | None = None,
        *,
        context: str | None = None,
        max_connections: int = 64,
        read_timeout_s: float | None = None,
    ) -> "KubeCluster":
        transport = await KubeTransport.connect(
            kubeconfig,
            context=context,
            max_connections=max_connections,
            read_timeout_s=read_timeout_s,
        )
        return cls(transport)

    async def close(self) -> None:
        await self.transport.close()

    async def __aenter__(self) -> "KubeCluster":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def is_namespaced(self, ref: ObjectRef) -> bool | None:
        return self.discovery.is_namespaced(ref)

    async def refresh_discovery(self) -> None:
        await self.discovery.refresh()

    async def apply(self, manifests: Sequence[Manifest], options: ApplyOptions) -> ApplyResult:
        return await self.applier.apply(manifests, options)

    async def delete(self, refs: Sequence[ObjectRef], options: ApplyOptions) -> ChangeSet:
        return await self.applier.delete(refs, options)

    async def get(self, ref: ObjectRef) -> JsonObject | None:
        return await self.applier.get(ref)

    async def apply_object(
        self,
        manifest: Manifest,
        options: ApplyOptions,
        *,
        live: JsonObject | None,
        known_changed: bool = False,
    ) -> tuple[ChangeSetEntry, JsonObject | None]:
        return await self.applier.apply_object(
            manifest, options, live=live, known_changed=known_changed
        )

    async def preview(
        self, manifest: Manifest, options: ApplyOptions
    ) -> tuple[JsonObject | None, JsonObject]:
        return await self.applier.preview(manifest, options)

    async def list_owned(self, kind: ObjectRef, *, sync: str) -> dict[ObjectRef, JsonObject]:
        resource = await self.discovery.resolve(kind)
        return await self.applier.list_owned(resource, sync=sync, namespace=kind.namespace)

    async def deletable_kinds(self) -> list[ObjectRef]:
        return [ObjectRef(r.group, r.kind, "", "", r.version) for r in self.discovery.deletable()]


class ManagedKindsWatcher:
    """The reactor's ``Watcher`` port over a WatchManager: kinds named by refs, resolved from
    the discovery cache (a kind the cache does not know yet is picked up on the next call)."""

    def __init__(self, manager: WatchManager, discovery: Discovery) -> None:
        self._manager = manager
        self._discovery = discovery

    def watch(self, kinds: Iterable[ObjectRef]) -> None:
        resources: dict[tuple[str, str], Resource] = {}
        for ref in kinds:
            if (ref.group, ref.kind) in resources:
                continue
            resource = self._discovery.cached(ref)
            if resource is not None:
                resources[(ref.group, ref.kind)] = resource
        self._manager.watch_kinds(resources.values())

    async def wait_synced(self) -> None:
        await self._manager.wait_synced()
