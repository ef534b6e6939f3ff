"""Which resource serves an apiVersion/kind, and is it namespaced.

Two requests (``/api`` and ``/apis`` in the aggregated discovery format) describe every resource
the server has. A kind we do not know triggers one refresh, because the usual cause is a CRD that
was applied a moment ago.
"""

from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

import anyio

from aioreconcile.adapters.kube.transport import KubeTransport
from aioreconcile.engine.errors import UnknownKindError
from aioreconcile.engine.model import JsonObject, ObjectRef

_AGGREGATED: Final = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
)


@dataclass(frozen=True)
class Resource:
    """One served resource: enough to build its URL and to stage it."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection_path(self, namespace: str = "") -> str:
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{prefix}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        return f"{prefix}/{self.plural}"

    def object_path(self, name: str, namespace: str = "") -> str:
        return f"{self.collection_path(namespace)}/{quote(name, safe='')}"


def _parse(document: JsonObject) -> dict[tuple[str, str, str], Resource]:
    found: dict[tuple[str, str, str], Resource] = {}
    for group_entry in document.get("items") or []:
        group = (group_entry.get("metadata") or {}).get("name", "")
        for version_entry in group_entry.get("versions") or []:
            version = version_entry.get("version", "")
            for resource in version_entry.get("resources") or []:
                kind = (resource.get("responseKind") or {}).get("kind")
                plural = resource.get("resource")
                if not kind or not plural or "/" in plural:
                    continue
                found[(group, version, kind)] = Resource(
                    group=group,
                    version=version,
                    kind=kind,
                    plural=plural,
                    namespaced=resource.get("scope") == "Namespaced",
                )
    return found


def _deletable(document: JsonObject) -> list[tuple[str, str, str]]:
    """Keys of the resources that can be listed and deleted, the preferred version of each
    kind first (aggregated discovery lists a group's versions in preference order)."""
    found: list[tuple[str, str, str]] = []
    for group_entry in document.get("items") or []:
        group = (group_entry.get("metadata") or {}).get("name", "")
        for version_entry in group_entry.get("versions") or []:
            for resource in version_entry.get("resources") or []:
                kind = (resource.get("responseKind") or {}).get("kind")
                verbs = set(resource.get("verbs") or ())
                if (
                    kind
                    and "/" not in str(resource.get("resource"))
                    and {"list", "delete"} <= verbs
                ):
                    found.append((group, version_entry.get("version", ""), kind))
    return found


class Discovery:
    """A cache of the server's resources, refreshed on a miss."""

    def __init__(self, transport: KubeTransport) -> None:
        self._transport = transport
        self._resources: dict[tuple[str, str, str], Resource] = {}
        self._deletable: list[Resource] = []
        self._by_group_kind: dict[tuple[str, str], Resource] = {}
        self._refresh_lock = anyio.Lock()
        self._generation = 0

    async def refresh(self) -> None:
        core = await self._transport.request("GET", "/api", accept=_AGGREGATED)
        groups = await self._transport.request("GET", "/apis", accept=_AGGREGATED)
        resources = _parse(core.body) | _parse(groups.body)
        self._resources = resources
        self._by_group_kind = {(r.group, r.kind): r for r in resources.values()}
        preferred: dict[tuple[str, str], Resource] = {}
        for key in _deletable(core.body) + _deletable(groups.body):
            if key in resources:
                preferred.setdefault((key[0], key[2]), resources[key])
        self._deletable = list(preferred.values())
        self._generation += 1

    def deletable(self) -> list[Resource]:
        """Every kind the server lets us list and delete, once, in its preferred version (as of
        the last refresh): where objects of ours can be, when nothing else says where."""
        return list(self._deletable)

    def cached(self, ref: ObjectRef) -> Resource | None:
        """The resource for ``ref`` if known, without a request."""
        return self._resources.get((ref.group, ref.version, ref.kind)) or (
            None if ref.version else self._by_group_kind.get((ref.group, ref.kind))
        )

    def is_namespaced(self, ref: ObjectRef) -> bool | None:
        """Scope of the kind, served in any version (scope never differs between versions)."""
        found = self._by_group_kind.get((ref.group, ref.kind))
        return None if found is None else found.namespaced

    async def resolve(self, ref: ObjectRef) -> Resource:
        """The resource for ``ref``, refreshing once when unknown; else UnknownKindError."""
        found = self.cached(ref)
        if found is not None:
            return found
        seen = self._generation
        async with self._refresh_lock:
            if self._generation == seen:  # nobody refreshed while we waited for the lock
                await self.refresh()
        found = self.cached(ref)
        if found is None:
            raise UnknownKindError(
                f"the cluster serves no {ref.kind} in {ref.api_version or ref.group or 'v1'} "
                f"(for {ref}); is its CRD installed?"
            )
        return found
