"""The values every part passes around: which object, at which revision, wanting what."""

import sys
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NewType, cast

import orjson

from aioreconcile.engine.errors import AioreconcileError

Revision = NewType("Revision", str)
"""A full Git commit SHA (or, for a directory applied by hand, a content digest)."""

JsonObject = dict[str, Any]
"""A Kubernetes object as decoded JSON: what the API sends and what we apply."""


def deflated(obj: JsonObject) -> bytes:
    """The compact form an object is kept in for long: orjson, deflated at zlib's fastest
    level; ``inflated`` reads it back. Realistic manifests (bench/manifests.py) shrink from
    ~2.1 KB to ~0.55 KB, for ~20-40 us per object; the result is exact-size, where orjson's
    own ``bytes`` keeps its ~4 KiB working buffer (docs/controller-benchmarks.md). One
    ``bytes`` instead of a tree of dicts: one allocation the allocator takes back whole."""
    return zlib.compress(orjson.dumps(obj), 1)


def inflated(encoded: bytes) -> JsonObject:
    return cast(JsonObject, orjson.loads(zlib.decompress(encoded)))


class ManifestError(AioreconcileError, ValueError):
    """An object in the source is unusable; the message names the file and the field."""


@dataclass(frozen=True, order=True, slots=True)
class ObjectRef:
    """The identity of an object in a cluster.

    ``version`` is carried but not compared: moving a manifest from ``v1beta1`` to ``v1`` names
    the same stored object, and must not make the old one look stale and get pruned.

    A controller keeps several per object (desired, stored, written, the watch caches) for as
    long as it runs: slots (no ``__dict__``) and interned group, version, kind and namespace
    (a few distinct values: one copy each, ``sys.intern``) keep them small, and keep fewer
    small objects scattered through the memory a reconcile's peak used, pinning it
    (docs/controller-benchmarks.md).
    """

    group: str  # "" for the core group
    kind: str
    namespace: str  # "" for cluster-scoped objects
    name: str
    version: str = field(default="", compare=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def inventory_id(self) -> str:
        """``<namespace>_<name>_<group>_<kind>``, the entry format Flux users know."""
        return f"{self.namespace}_{self.name}_{self.group}_{self.kind}"

    def with_namespace(self, namespace: str) -> "ObjectRef":
        return ObjectRef(self.group, self.kind, namespace, self.name, self.version)

    def __str__(self) -> str:
        kind = f"{self.kind}.{self.group}" if self.group else self.kind
        return f"{kind}/{self.namespace}/{self.name}" if self.namespace else f"{kind}/{self.name}"

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> "ObjectRef":
        """The identity of a decoded object; raises ManifestError naming what is missing."""
        api_version = obj.get("apiVersion")
        kind = obj.get("kind")
        metadata = obj.get("metadata")
        if not isinstance(api_version, str) or not api_version:
            raise ManifestError("missing apiVersion")
        if not isinstance(kind, str) or not kind:
            raise ManifestError("missing kind")
        if not isinstance(metadata, Mapping):
            raise ManifestError("missing metadata")
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            raise ManifestError("missing metadata.name")
        namespace = metadata.get("namespace") or ""
        if not isinstance(namespace, str):
            raise ManifestError("metadata.namespace is not a string")
        group, _, version = api_version.rpartition("/")
        return cls(
            group=sys.intern(group),
            kind=sys.intern(kind),
            namespace=sys.intern(namespace),
            name=name,
            version=sys.intern(version),
        )

    @classmethod
    def parse_inventory_id(cls, entry: str, version: str = "") -> "ObjectRef":
        """Inverse of ``inventory_id``. Names and namespaces cannot contain ``_``; groups can't
        either, so the split is unambiguous."""
        namespace, name, group, kind = entry.split("_", 3)
        return cls(group=group, kind=kind, namespace=namespace, name=name, version=version)


@dataclass(frozen=True, eq=False)
class Manifest:
    """One desired object and where it came from (``origin`` names the file for errors)."""

    ref: ObjectRef
    body: JsonObject
    origin: str
    # blake2b-128 of the YAML document's text it was parsed from (``manifests.KnownDocuments``),
    # None when it stands for a List's item or came from JSON; ``defaulted``: its namespace was
    # set by ``default_namespace``, not written.
    source: bytes | None = None
    defaulted: bool = False
