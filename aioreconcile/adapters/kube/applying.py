"""Server-side apply, staged and concurrent, writing only what differs; and deleting for prune.

Per stage (CRDs, Namespaces, other cluster-scoped, namespaced) the live objects of this sync are
listed once per kind and namespace, then each object is decided purely
(``engine.planning.decide``): unchanged objects are not written at all, so their resourceVersion
stays; objects the server may normalise are checked with a server-side dry-run first, unless
their declaration changed since the caller last applied them (``ApplyOptions.last_applied``).
Objects the caller knows as its last write left them and whose declaration changed are written
without being listed (``ApplyOptions.as_left``). Objects in a stage go concurrently under a
limit; one failure never stops the others.

Before that, ``planning.refusal`` may leave an existing object alone (``reconcile: disabled``:
skipped) or fail it (another sync's object). A change the server refuses because a field is
immutable fails naming the fields, or, with ``aioreconcile.dev/force: enabled``, recreates the
object (``_recreate``), as Flux's ``kustomize.toolkit.fluxcd.io/force`` does.
"""

import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Final, TypeVar

import anyio

from aioreconcile.adapters.kube.discovery import Discovery, Resource
from aioreconcile.adapters.kube.transport import APPLY_PATCH, KubeTransport
from aioreconcile.engine import health, planning
from aioreconcile.engine.applying import ApplyOptions, ApplyResult
from aioreconcile.engine.changeset import Action, ChangeSet, ChangeSetEntry
from aioreconcile.engine.errors import (
    AioreconcileError,
    ApiError,
    ConflictError,
    NotFoundError,
    TransientError,
)
from aioreconcile.engine.inventory import prunable
from aioreconcile.engine.model import JsonObject, Manifest, ObjectRef
from aioreconcile.engine.naming import SYNC_LABEL

_SETTLE_POLL_S: Final = 0.05
T = TypeVar("T")
R = TypeVar("R")


def _ref_with_version(ref: ObjectRef, resource: Resource) -> ObjectRef:
    return ref if ref.version else replace(ref, version=resource.version)


async def _map_concurrently(
    function: Callable[[T], Awaitable[R]], items: Sequence[T], *, limit: int
) -> list[R]:
    """``[await function(i) for i in items]``, at most ``limit`` at a time, results in order.

    ``limit`` workers take the next item as they finish one (as client-go's workqueue workers
    do), rather than a task per item waiting on a limiter: 10,000 waiting tasks were ~59 MiB
    of a cold apply's peak, which the allocator kept after it (docs/controller-benchmarks.md).
    """
    results: dict[int, R] = {}
    pending = iter(enumerate(items))

    async def worker() -> None:
        for index, item in pending:
            results[index] = await function(item)

    async with anyio.create_task_group() as tasks:
        for _ in range(min(max(1, limit), len(items))):
            tasks.start_soon(worker)
    return [results[i] for i in range(len(items))]


def _entry(
    ref: ObjectRef,
    action: Action,
    started: float,
    *,
    error: str | None = None,
    before: str | None = None,
    after: str | None = None,
) -> ChangeSetEntry:
    """An entry timed from ``started`` (monotonic), with its wall-clock start for spans."""
    duration = time.monotonic() - started
    return ChangeSetEntry(
        ref,
        action,
        error=error,
        duration_s=duration,
        resource_version_before=before,
        resource_version_after=after,
        started_at=time.time() - duration,
    )


def _failed(ref: ObjectRef, error: Exception, started: float) -> ChangeSetEntry:
    return _entry(ref, Action.FAILED, started, error=str(error))


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One object that needs a request: what ``_prepare`` decided, and what it was decided on."""

    ref: ObjectRef
    resource: Resource
    manifest: Manifest  # stamped again by ``_write``: 10,000 stamped copies held at once
    live: JsonObject | None  # (a cold apply) would raise the peak by tens of MiB
    decision: planning.Decision
    started: float
    known_version: str | None = None  # not read: the resourceVersion ``as_left`` gave


def _prepare(
    manifest: Manifest,
    resource: Resource,
    live: JsonObject | None,
    options: ApplyOptions,
    *,
    known_changed: bool = False,
) -> tuple[ChangeSetEntry, JsonObject | None] | _Prepared:
    """What can be settled without a request (pure): the stamped body, a refusal, an object
    already as declared (``UNCHANGED``, its entry and live returned); otherwise a ``_Prepared``
    for ``Applier._write``. ``known_changed`` skips the decision (and so the dry-run)."""
    started = time.monotonic()
    ref = _ref_with_version(manifest.ref, resource)
    desired = _stamped(manifest, options)
    before = _resource_version(live)
    refused = planning.refusal(desired, live, sync=options.sync)
    if refused is not None:
        action, why = refused
        return _entry(ref, action, started, error=why, before=before, after=before), None
    last_applied = options.last_applied
    decision = (
        planning.Decision.APPLY
        if known_changed
        else planning.decide(
            desired,
            live,
            field_manager=options.field_manager,
            previous=None if last_applied is None else partial(last_applied, manifest.ref),
        )
    )
    if decision is planning.Decision.UNCHANGED:
        return _entry(ref, Action.UNCHANGED, started, before=before, after=before), live
    return _Prepared(ref, resource, manifest, live, decision, started)


def _stamped(manifest: Manifest, options: ApplyOptions) -> JsonObject:
    return planning.stamp(
        manifest.body,
        sync=options.sync,
        revision=options.revision,
        traceparent=options.traceparent,
        inventory=options.inventory,
    )


class Applier:
    """Applies manifests to one cluster through a shared transport and discovery cache."""

    def __init__(self, transport: KubeTransport, discovery: Discovery) -> None:
        self._transport = transport
        self._discovery = discovery

    # --- reading ---------------------------------------------------------------------------------

    async def list_owned(
        self, resource: Resource, *, sync: str | None, namespace: str = ""
    ) -> dict[ObjectRef, JsonObject]:
        """Live objects of ``resource`` labelled as belonging to ``sync``, or to any sync when
        ``sync`` is None (one LIST)."""
        selector = SYNC_LABEL if sync is None else f"{SYNC_LABEL}={sync}"
        listed = await self._transport.request(
            "GET", resource.collection_path(namespace), params={"labelSelector": selector}
        )
        objects: dict[ObjectRef, JsonObject] = {}
        for item in listed.body.get("items") or []:
            item.setdefault("apiVersion", resource.api_version)
            item.setdefault("kind", resource.kind)
            objects[ObjectRef.of(item)] = item
        return objects

    async def get(self, ref: ObjectRef) -> JsonObject | None:
        resource = await self._discovery.resolve(ref)
        try:
            got = await self._transport.request(
                "GET", resource.object_path(ref.name, ref.namespace)
            )
        except NotFoundError:
            return None
        return got.body

    # --- applying --------------------------------------------------------------------------------

    async def apply(self, manifests: Sequence[Manifest], options: ApplyOptions) -> ApplyResult:
        """Apply in stages; CRDs and Namespaces settle (Established/Active) before the rest."""
        entries: list[ChangeSetEntry] = []
        live: dict[ObjectRef, JsonObject] = {}
        for stage, members in planning.staged(manifests, is_namespaced=self._scope_or_namespaced):
            settles = (
                stage in (planning.Stage.CRDS, planning.Stage.NAMESPACES) and not options.dry_run
            )
            # A settling stage needs its objects whole until they settled (few: CRDs, Namespaces).
            stage_entries, stage_live = await self._apply_stage(members, options, keep=not settles)
            if settles:
                await self._settle(list(stage_live.values()), options)
                stage_live = _kept_all(stage_entries, stage_live, options)
            entries += stage_entries
            live |= stage_live
        return ApplyResult(ChangeSet.of(entries), live)

    def _scope_or_namespaced(self, ref: ObjectRef) -> bool:
        # Kinds unknown before their CRD is applied are custom resources: namespaced or not,
        # they belong after the cluster-scoped stage, which is where this puts them.
        scope = self._discovery.is_namespaced(ref)
        return True if scope is None else scope

    async def _apply_stage(
        self, members: Sequence[Manifest], options: ApplyOptions, *, keep: bool
    ) -> tuple[list[ChangeSetEntry], dict[ObjectRef, JsonObject]]:
        """``keep``: pass each object through ``options.on_live`` as it arrives."""
        unresolved: dict[int, ChangeSetEntry] = {}
        results: dict[int, tuple[ChangeSetEntry, JsonObject | None]] = {}
        pending: list[tuple[int, _Prepared]] = []
        unread = self._unread(members, options)
        pending += unread.items()
        current = await self._live_for(members, options, unresolved, skip=unread.keys())
        # Decided here, without a task each: on a re-apply most objects need no request, and a
        # task and a limiter slot per object cost more than the decision itself (~80 us).
        for index, manifest in enumerate(members):
            if index in unread:
                continue
            resource = self._discovery.cached(manifest.ref)
            if index in unresolved or resource is None:
                results[index] = unresolved[index], None
                continue
            # Popped: the LIST's copy goes with the object's own request, not with the stage.
            prepared = _prepare(manifest, resource, current.pop(manifest.ref, None), options)
            if isinstance(prepared, _Prepared):
                pending.append((index, prepared))
                continue
            results[index] = _kept(*prepared, options) if keep else prepared
            if options.on_entry is not None:
                options.on_entry(prepared[0])
        current.clear()
        pending.sort(key=lambda item: item[0])

        async def one(item: tuple[int, _Prepared]) -> tuple[ChangeSetEntry, JsonObject | None]:
            result = await self._write(item[1], options)
            if options.on_entry is not None:
                options.on_entry(result[0])
            return _kept(*result, options) if keep else result

        written = await _map_concurrently(one, pending, limit=options.concurrency)
        for (index, _), result in zip(pending, written, strict=True):
            results[index] = result
        ordered = [results[i] for i in range(len(members))]
        live_after = {entry.ref: obj for entry, obj in ordered if obj is not None}
        return [entry for entry, _ in ordered], live_after

    def _unread(self, members: Sequence[Manifest], options: ApplyOptions) -> dict[int, _Prepared]:
        """The members applied without reading them first (``ApplyOptions.as_left``): known to
        be as our last write left them, and declared otherwise since (``changed_since``), so a
        write is due whatever a read would say. A member whose kind is not cached, or whose
        declaration did not change (only reordered), is read as usual."""
        as_left, last_applied = options.as_left, options.last_applied
        if as_left is None or last_applied is None:
            return {}
        unread: dict[int, _Prepared] = {}
        for index, manifest in enumerate(members):
            version = as_left(manifest.ref)
            resource = self._discovery.cached(manifest.ref)
            if version is None or resource is None:
                continue
            previous = last_applied(manifest.ref)
            desired = _stamped(manifest, options)
            if previous is None or not planning.changed_since(desired, previous):
                continue
            ref = _ref_with_version(manifest.ref, resource)
            unread[index] = _Prepared(
                ref,
                resource,
                manifest,
                None,
                planning.Decision.APPLY,
                time.monotonic(),
                known_version=version,
            )
        return unread

    async def _live_for(
        self,
        members: Sequence[Manifest],
        options: ApplyOptions,
        failures: dict[int, ChangeSetEntry],
        *,
        skip: Collection[int] = (),
    ) -> dict[ObjectRef, JsonObject]:
        """One LIST per (resource, namespace) in the stage; unknown kinds become failures.

        A LIST that fails (typically 403: a sync's service account may not list that kind, and
        RBAC ``resourceNames`` can grant get but never list) does not fail the stage: its
        objects are read one GET each, and an object whose GET fails too fails alone, with the
        server's words, which name it (``clusterroles... "x" is forbidden: User ...``). Members
        at ``skip`` are not read (``_unread``)."""
        wanted: dict[tuple[Resource, str], list[int]] = {}
        for index, manifest in enumerate(members):
            if index in skip:
                continue
            try:
                resource = await self._discovery.resolve(manifest.ref)
            except AioreconcileError as e:
                failures[index] = _failed(manifest.ref, e, time.monotonic())
                continue
            key = (resource, manifest.ref.namespace if resource.namespaced else "")
            wanted.setdefault(key, []).append(index)

        async def list_one(key: tuple[Resource, str]) -> dict[ObjectRef, JsonObject] | None:
            # Every sync's objects, not only ours: one labelled as another sync's must not be
            # taken for absent and silently taken over (``planning.refusal``).
            resource, namespace = key
            try:
                return await self.list_owned(resource, sync=None, namespace=namespace)
            except AioreconcileError:
                return None

        async def get_one(index: int) -> JsonObject | None:
            started = time.monotonic()
            try:
                obj = await self.get(members[index].ref)
            except AioreconcileError as e:
                failures[index] = _failed(members[index].ref, e, started)
                return None
            labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
            return obj if SYNC_LABEL in labels else None  # as the LIST's filter

        keys = list(wanted)
        current: dict[ObjectRef, JsonObject] = {}
        unlisted: list[int] = []
        listed = await _map_concurrently(list_one, keys, limit=options.concurrency)
        for key, objects in zip(keys, listed, strict=True):
            if objects is None:
                unlisted += wanted[key]
            else:
                current |= objects
        got = await _map_concurrently(get_one, unlisted, limit=options.concurrency)
        for index, obj in zip(unlisted, got, strict=True):
            if obj is not None:
                current[members[index].ref] = obj
        return current

    async def _apply_one(
        self,
        manifest: Manifest,
        resource: Resource,
        live: JsonObject | None,
        options: ApplyOptions,
        *,
        known_changed: bool = False,
    ) -> tuple[ChangeSetEntry, JsonObject | None]:
        prepared = _prepare(manifest, resource, live, options, known_changed=known_changed)
        if not isinstance(prepared, _Prepared):
            return prepared
        return await self._write(prepared, options)

    async def _write(
        self, prepared: _Prepared, options: ApplyOptions
    ) -> tuple[ChangeSetEntry, JsonObject | None]:
        """The requests of one object ``_prepare`` could not settle: a dry-run first when the
        decision is ``VERIFY``, then the apply; a recreate for a changed immutable field."""
        ref, resource, live = prepared.ref, prepared.resource, prepared.live
        desired = _stamped(prepared.manifest, options)
        started = prepared.started
        before = prepared.known_version or _resource_version(live)
        try:
            decision = prepared.decision
            if decision is planning.Decision.VERIFY and live is not None:
                preview = await self._server_apply(
                    resource, ref, planning.carry_stamps(desired, live), options, dry_run=True
                )
                if planning.same_content(preview[1], live):
                    decision = planning.Decision.UNCHANGED
            if decision is planning.Decision.UNCHANGED:
                return _entry(ref, Action.UNCHANGED, started, before=before, after=before), live
            status, applied = await self._server_apply(
                resource, ref, desired, options, dry_run=options.dry_run
            )
        except ApiError as e:
            immutable = planning.immutable_fields(e)
            if not immutable:
                return _failed(ref, e, started), None
            if options.dry_run or not planning.may_recreate(desired):
                error = planning.immutable_error(ref, immutable)
                return _entry(ref, Action.FAILED, started, error=error, before=before), None
            try:
                status, applied = await self._recreate(resource, ref, desired, options)
            except AioreconcileError as recreate_error:
                return _failed(ref, recreate_error, started), None
        except AioreconcileError as e:
            return _failed(ref, e, started), None
        after = _resource_version(applied)
        if status == 201:
            action = Action.CREATED
        elif before is not None and after == before:
            action = Action.UNCHANGED
        else:
            action = Action.CONFIGURED
        return _entry(ref, action, started, before=before, after=after), applied

    async def _server_apply(
        self,
        resource: Resource,
        ref: ObjectRef,
        body: JsonObject,
        options: ApplyOptions,
        *,
        dry_run: bool,
    ) -> tuple[int, JsonObject]:
        params = {"fieldManager": options.field_manager}
        if options.force_conflicts:
            params["force"] = "true"
        if dry_run:
            params["dryRun"] = "All"
        response = await self._transport.request(
            "PATCH",
            resource.object_path(ref.name, ref.namespace),
            params=params,
            body=body,
            content_type=APPLY_PATCH,
        )
        return response.status, response.body

    async def _recreate(
        self, resource: Resource, ref: ObjectRef, desired: JsonObject, options: ApplyOptions
    ) -> tuple[int, JsonObject]:
        """Delete the object we read (a uid precondition: never a newer one of the same name),
        wait until it is gone, then apply ``desired`` as a new object."""
        current = await self.get(ref)
        if current is not None:
            uid = str((current.get("metadata") or {}).get("uid") or "")
            body = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "propagationPolicy": "Background",
                "preconditions": {"uid": uid},
            }
            with contextlib.suppress(NotFoundError):
                await self._transport.request(
                    "DELETE", resource.object_path(ref.name, ref.namespace), body=body
                )
            gone = False
            with anyio.move_on_after(options.settle_timeout_s):
                while not gone:
                    still = await self.get(ref)
                    gone = still is None or _uid(still) != uid
                    if not gone:
                        await anyio.sleep(_SETTLE_POLL_S)
            if not gone:
                raise TransientError(
                    f"{ref}: deleted to be recreated, still there after "
                    f"{options.settle_timeout_s:g} s (finalizers?)"
                )
        return await self._server_apply(resource, ref, desired, options, dry_run=False)

    async def _settle(self, objects: Sequence[JsonObject], options: ApplyOptions) -> None:
        """Wait until CRDs are Established and Namespaces Active, then refresh discovery so the
        next stage can resolve the new kinds. Objects that do not settle in time are left to
        fail in their own stage with the server's message."""
        pending = [ObjectRef.of(o) for o in objects if health.compute(o).status != "Current"]
        with anyio.move_on_after(options.settle_timeout_s):
            while pending:
                await anyio.sleep(_SETTLE_POLL_S)
                still = []
                for ref in pending:
                    obj = await self.get(ref)
                    if obj is not None and health.compute(obj).status != "Current":
                        still.append(ref)
                pending = still
        if any(o.get("kind") == "CustomResourceDefinition" for o in objects):
            await self._discovery.refresh()

    async def apply_object(
        self,
        manifest: Manifest,
        options: ApplyOptions,
        *,
        live: JsonObject | None,
        known_changed: bool = False,
    ) -> tuple[ChangeSetEntry, JsonObject | None]:
        """One object, its live state given (None when deleted); ``known_changed`` skips the
        decision (and so the dry-run) because the caller saw a declared value differ."""
        try:
            resource = await self._discovery.resolve(manifest.ref)
        except AioreconcileError as e:
            return _failed(manifest.ref, e, time.monotonic()), None
        return await self._apply_one(manifest, resource, live, options, known_changed=known_changed)

    async def preview(
        self, manifest: Manifest, options: ApplyOptions
    ) -> tuple[JsonObject | None, JsonObject]:
        """The live object (None if absent) and the object as it would be stored after our
        apply (server-side dry-run), with the live stamps kept so that a new revision alone
        shows no difference; live itself for an object an apply would skip."""
        resource = await self._discovery.resolve(manifest.ref)
        ref = _ref_with_version(manifest.ref, resource)
        desired = _stamped(manifest, options)
        live = await self.get(ref)
        refused = planning.refusal(desired, live, sync=options.sync)
        if live is not None and refused is not None and refused[0] is Action.SKIPPED:
            return live, live  # an apply leaves it alone (reconcile: disabled)
        if live is not None:
            desired = planning.carry_stamps(desired, live)
        _, preview = await self._server_apply(resource, ref, desired, options, dry_run=True)
        return live, preview

    # --- pruning ---------------------------------------------------------------------------------

    async def delete(self, refs: Sequence[ObjectRef], options: ApplyOptions) -> ChangeSet:
        """Delete stale objects, namespaced first and CRDs last; each is checked live first
        (prune-disabled annotation, still ours), deleted with Background propagation and a
        ``uid`` precondition, so the object deleted is the one checked (see ``_delete_one``)."""
        entries: list[ChangeSetEntry] = []

        async def one(ref: ObjectRef) -> ChangeSetEntry:
            return await self._delete_one(ref, options)

        for _stage, members in planning.prune_order(refs, is_namespaced=self._scope_or_namespaced):
            entries += await _map_concurrently(one, members, limit=options.concurrency)
        return ChangeSet.of(entries)

    async def _delete_one(self, ref: ObjectRef, options: ApplyOptions) -> ChangeSetEntry:
        started = time.monotonic()
        try:
            resource = await self._discovery.resolve(ref)
        except AioreconcileError:
            # Its kind is gone (CRD deleted): so are all its objects.
            return _entry(ref, Action.SKIPPED, started, error="kind no longer served")
        try:
            live = await self.get(ref)
            allowed, why = prunable(ref, live, sync=options.sync, inventory=options.inventory)
            if not allowed:
                return _entry(ref, Action.SKIPPED, started, error=why)
            body: JsonObject = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "propagationPolicy": "Background",
            }
            uid = ((live or {}).get("metadata") or {}).get("uid")
            if uid:
                # The server deletes only the object we just checked: one deleted and recreated
                # by someone else in between is refused with 409 (Kubernetes' garbage collector
                # deletes with the same precondition, pkg/controller/garbagecollector).
                body["preconditions"] = {"uid": uid}
            if options.dry_run:
                body["dryRun"] = ["All"]
            await self._transport.request(
                "DELETE", resource.object_path(ref.name, ref.namespace), body=body
            )
        except NotFoundError:
            return _entry(ref, Action.SKIPPED, started, error="already gone")
        except ConflictError:
            # 409 on a uid precondition: the object under that name is not the one we read.
            return _entry(
                ref,
                Action.SKIPPED,
                started,
                error=(
                    "deleted and recreated by someone else after it was checked (its uid "
                    "changed): the new object is not ours to delete"
                ),
            )
        except AioreconcileError as e:
            return _failed(ref, e, started)
        return _entry(ref, Action.DELETED, started, before=_resource_version(live))


def _kept(
    entry: ChangeSetEntry, obj: JsonObject | None, options: ApplyOptions
) -> tuple[ChangeSetEntry, JsonObject | None]:
    return entry, options.kept(entry, obj)


def _kept_all(
    entries: Sequence[ChangeSetEntry], live: dict[ObjectRef, JsonObject], options: ApplyOptions
) -> dict[ObjectRef, JsonObject]:
    kept = ((e.ref, options.kept(e, live.get(e.ref))) for e in entries)
    return {ref: obj for ref, obj in kept if obj is not None}


def _resource_version(obj: JsonObject | None) -> str | None:
    if obj is None:
        return None
    metadata: dict[str, Any] = obj.get("metadata") or {}
    version = metadata.get("resourceVersion")
    return str(version) if version is not None else None


def _uid(obj: JsonObject) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")
