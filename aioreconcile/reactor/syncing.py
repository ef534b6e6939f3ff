"""One reconcile of one source directory: render -> staged apply -> prune -> inventory -> wait.

The order and the refusals live here and nowhere else: nothing is applied when rendering fails,
and nothing is pruned when rendering or any apply failed, or when the source became empty and
that was not explicitly allowed. Failed deletions stay in the inventory so the next run retries.
With no stored inventory (the first apply, or someone deleted it) the inventory is rebuilt from
the objects that carry the sync's labels and name this inventory in their
``aioreconcile.dev/inventory`` annotation, so nothing it applied is orphaned and nothing another
sync of the same name applied is taken for its own; a stored inventory
that cannot be read fails the run (``InventoryFailed``, not retried until the next poll or push)
and prunes nothing.
"""

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Final

import anyio

from aioreconcile.engine import health
from aioreconcile.engine.applying import ApplyOptions, ApplyResult
from aioreconcile.engine.changeset import ChangeSet, ChangeSetEntry
from aioreconcile.engine.errors import AioreconcileError, ApiError, TransientError
from aioreconcile.engine.inventory import Inventory, allow_prune, claimed_by, merge, stale
from aioreconcile.engine.manifests import KnownDocuments
from aioreconcile.engine.model import JsonObject, Manifest, ObjectRef
from aioreconcile.engine.outcomes import Reason, SyncOutcome
from aioreconcile.engine.planning import Stage, staged
from aioreconcile.engine.sources import RenderSpec
from aioreconcile.reactor.ports import Cluster, InventoryStore, ManifestRenderer
from aioreconcile.reactor.tracing import NoTracing, Tracing

logger = logging.getLogger(__name__)

HEALTH_POLL_S: Final = 0.5
_HEALTH_READ_CONCURRENCY: Final = 16

NotReady = tuple[tuple[ObjectRef, health.Health], ...]


@dataclass(frozen=True)
class SyncRequest:
    """``wait``: judge the applied objects' health (``engine.health``) after the apply.
    ``wait_in_place`` polls them here until they are Current or ``wait_timeout_s`` passed
    (the CLI: one command, one result). A caller that must not hold its lane for the whole
    timeout (the controller) sets it False: the objects are judged once, as the apply returned
    them, and those not yet Current come back as ``Reason.PROGRESSING`` for it to poll."""

    directory: Path
    render: RenderSpec
    options: ApplyOptions
    root: Path | None = None
    prune: bool = False
    allow_empty: bool = False
    wait: bool = False
    wait_timeout_s: float = 300.0
    wait_in_place: bool = True
    # False: render with the discovery already cached, refreshing it (and rendering again)
    # only when the output names a kind it does not know, as controller-runtime's lazy
    # RESTMapper reloads on a miss. The controller passes False where its last reconcile of
    # the sync succeeded (``_may_plan_changes_only``): two discovery GETs and their parse were
    # 3-10 ms of every push.
    refresh_discovery: bool = True
    # The documents of the last render (the controller's, where ``_may_plan_changes_only``):
    # those whose text is the same are not parsed again. A fresh table records this render's
    # documents for the next; a render again after a discovery refresh parses everything.
    known: KnownDocuments | None = None


async def sync_once(
    request: SyncRequest,
    *,
    cluster: Cluster,
    render: ManifestRenderer,
    inventory: InventoryStore | None = None,
    before_apply: Callable[[Sequence[Manifest]], Sequence[Manifest] | None] | None = None,
    tracing: Tracing | None = None,
) -> SyncOutcome:
    """Reconcile once. ``before_apply`` sees the rendered manifests before anything is written,
    so a drift watcher already compares incoming events with the new desired state; it may
    return the ones to plan and apply (None: all). The others are taken to be as the caller
    last applied them (the controller's ``_plan_changes_only``); inventory and prune still
    count every rendered object.

    With an ``inventory``, every object is stamped with its key (``INVENTORY_ANNOTATION``):
    the store names it, so the stamp and the rebuild from labels cannot disagree."""
    if inventory is not None and request.options.inventory != inventory.key:
        request = replace(request, options=replace(request.options, inventory=inventory.key))
    revision = request.options.revision
    tracing = tracing or NoTracing()
    with tracing.stage("render", {"aioreconcile.render.type": request.render.type.value}) as span:
        try:
            if request.refresh_discovery:
                await cluster.refresh_discovery()
            rendering = partial(
                render,
                request.directory,
                request.render,
                root=request.root,
                is_namespaced=cluster.is_namespaced,
            )
            known = request.known
            manifests = await rendering(known=known)
            if not request.refresh_discovery and any(
                cluster.is_namespaced(m.ref) is None for m in manifests
            ):
                await cluster.refresh_discovery()
                known = KnownDocuments() if known is not None else None
                manifests = await rendering(known=known)
        except AioreconcileError as e:
            span.record_error(str(e), error=e)
            # Unreachable apiserver (discovery) is worth a retry; a broken source is not.
            return SyncOutcome(
                Reason.RENDER_FAILED,
                str(e),
                revision,
                prune_note="render failed",
                transient=_transient(e),
            )
        span.set_attributes({"aioreconcile.objects": len(manifests)})
        if known is not None:
            span.set_attributes(
                {
                    "aioreconcile.render.parsed": known.parsed,
                    "aioreconcile.render.reused": known.reused,
                }
            )

    planned: Sequence[Manifest] = manifests
    if before_apply is not None:
        chosen = before_apply(manifests)
        planned = manifests if chosen is None else chosen
    attributes = {"aioreconcile.objects": len(manifests), "aioreconcile.planned": len(planned)}
    with tracing.stage("apply", attributes) as span:
        result = await _apply_staged(cluster, planned, request.options, tracing=tracing)
        if result.changeset.failed:
            span.record_error(f"{len(result.changeset.failed)} object(s) failed to apply")
    applied = result.changeset
    pruned = ChangeSet()
    prune_note: str | None = None
    inventory_size: int | None = None
    if inventory is not None:
        current = Inventory.of(m.ref for m in manifests)
        try:
            with tracing.stage("inventory read"):
                previous = await inventory.load()
                if previous is None and request.prune:
                    previous = await inventory_from_labels(
                        cluster,
                        request.options,
                        inventory=inventory.key,
                        namespaces=[m.ref.namespace for m in manifests],
                    )
            kept: Inventory = current
            if request.prune and previous is not None:
                allowed, why = allow_prune(
                    fetch_ok=True,
                    render_ok=True,
                    apply_failed=len(applied.failed),
                    current_empty=not manifests,
                    allow_empty=request.allow_empty,
                )
                if allowed:
                    with tracing.stage("prune") as span:
                        pruned = await cluster.delete(stale(previous, current), request.options)
                        tracing.objects(pruned.entries, operation="prune")
                        if pruned.failed:
                            span.record_error(f"{len(pruned.failed)} object(s) failed to delete")
                    kept = merge(current, [e.ref for e in pruned.failed])
                else:
                    prune_note = why
                    # Keep what we could not prune yet, so a later good run still removes it.
                    kept = merge(current, previous.entries)
            elif not request.prune:
                prune_note = "prune not requested"
            if not request.options.dry_run:
                with tracing.stage("inventory write", {"aioreconcile.objects": len(kept.entries)}):
                    await inventory.save(kept, revision=revision)
            inventory_size = len(kept.entries)
        except AioreconcileError as e:
            return SyncOutcome(
                Reason.INVENTORY_FAILED,
                f"inventory {inventory}: {e}",
                revision,
                applied=applied,
                pruned=pruned,
                prune_note=prune_note,
                live=result.live,
                transient=_transient(e),
            )

    not_ready: NotReady = ()
    if request.wait and not request.options.dry_run and not request.wait_in_place:
        not_ready = tuple(health.not_ready(result.live.values()))
    elif request.wait and not request.options.dry_run:
        with tracing.stage("health wait") as span:
            not_ready = await wait_until_ready(
                cluster, result.live, timeout_s=request.wait_timeout_s
            )
            if not_ready:
                span.record_error(f"{len(not_ready)} object(s) not ready")

    if applied.failed:
        reason, message = Reason.APPLY_FAILED, f"{len(applied.failed)} object(s) failed to apply"
    elif pruned.failed:
        reason, message = Reason.PRUNE_FAILED, f"{len(pruned.failed)} object(s) failed to delete"
    elif not_ready and not request.wait_in_place and not health.failed(not_ready):
        reason = Reason.PROGRESSING
        message = f"applied; waiting up to {request.wait_timeout_s:g} s for {_count(not_ready)}"
    elif not_ready:
        reason = Reason.HEALTH_CHECK_FAILED
        message = not_ready_message(not_ready, timeout_s=request.wait_timeout_s)
    else:
        reason, message = Reason.SUCCEEDED, f"applied revision {revision}"
    return SyncOutcome(
        reason,
        message,
        revision,
        applied=applied,
        pruned=pruned,
        prune_note=prune_note,
        not_ready=not_ready,
        inventory_size=inventory_size,
        live=result.live,
    )


def _transient(error: Exception) -> bool:
    return isinstance(error, TransientError) or (isinstance(error, ApiError) and error.transient)


async def inventory_from_labels(
    cluster: Cluster, options: ApplyOptions, *, inventory: str, namespaces: Iterable[str] = ()
) -> Inventory:
    """The inventory ``inventory`` rebuilt from the objects labelled as ``options.sync``'s and
    annotated as applied under that inventory (``claimed_by``), in every kind the cluster can
    list and delete. The label narrows the LIST; the annotation decides: another controller's
    sync of the same name labels its objects alike but names its own inventory, and an object
    that names none (applied by an older version, or labelled by hand) is left alone.

    Used when none is stored: on a first apply it finds what was just applied (and anything a
    lost inventory listed); after the inventory was deleted it finds everything, so an object
    removed from the source meanwhile is still pruned instead of orphaned. ``prunable`` still
    checks each one (our managed-by label, this sync's label, no opt-out) before any delete
    (Argo CD finds an application's objects by its tracking label the same way).

    Each kind is listed cluster-wide; where that is refused (a sync acting as a namespaced
    service account) a namespaced kind is listed in each of ``namespaces`` instead. A kind that
    still cannot be listed is skipped with a warning naming it; a transient failure fails the
    run so it is retried.
    """
    found: list[ObjectRef] = []
    skipped: list[str] = []
    transient: list[AioreconcileError] = []
    limiter = anyio.CapacityLimiter(max(1, options.concurrency))
    scoped = sorted(set(namespaces) - {""})

    async def listing(kind: ObjectRef) -> bool:
        async with limiter:
            try:
                listed = await cluster.list_owned(kind, sync=options.sync)
                found.extend(ref for ref, live in listed.items() if claimed_by(live, inventory))
            except AioreconcileError as e:
                if _transient(e):
                    transient.append(e)
                return False
            return True

    async def one(kind: ObjectRef) -> None:
        if await listing(kind) or transient:
            return
        if not scoped or not cluster.is_namespaced(kind):
            skipped.append(kind.kind)
            return
        for namespace in scoped:
            if not await listing(replace(kind, namespace=namespace)):
                skipped.append(f"{kind.kind} in {namespace}")

    async with anyio.create_task_group() as tasks:
        for kind in await cluster.deletable_kinds():
            tasks.start_soon(one, kind)
    if transient:
        raise TransientError(f"rebuilding the inventory from labels: {transient[0]}")
    if skipped:
        logger.warning(
            "could not search these kinds for objects of this sync",
            extra={"sync": options.sync, "skipped": sorted(skipped)},
        )
    logger.info(
        "no stored inventory: rebuilt from labels",
        extra={"sync": options.sync, "inventory": inventory, "objects": len(found)},
    )
    return Inventory.of(found)


_STAGE_NAMES: Final = {
    Stage.CRDS: "apply CustomResourceDefinitions",
    Stage.NAMESPACES: "apply Namespaces",
    Stage.CLUSTER: "apply cluster-scoped",
    Stage.NAMESPACED: "apply namespaced",
}


async def _apply_staged(
    cluster: Cluster, manifests: Sequence[Manifest], options: ApplyOptions, *, tracing: Tracing
) -> ApplyResult:
    """One ``cluster.apply`` per stage, so each stage is a span of its own with its objects'
    spans inside; the applier still settles CRDs and Namespaces before the next stage."""

    def namespaced(ref: ObjectRef) -> bool:
        # A kind the cluster does not know yet comes from a CRD of this apply: namespaced or
        # not, it belongs after the cluster-scoped stage (the applier stages it the same way).
        scope = cluster.is_namespaced(ref)
        return True if scope is None else scope

    entries: list[ChangeSetEntry] = []
    live: dict[ObjectRef, JsonObject] = {}
    for stage, members in staged(manifests, is_namespaced=namespaced):
        with tracing.stage(_STAGE_NAMES[stage], {"aioreconcile.objects": len(members)}) as span:
            result = await cluster.apply(members, options)
            tracing.objects(result.changeset.entries, operation="apply")
            if result.changeset.failed:
                span.record_error(f"{len(result.changeset.failed)} object(s) failed to apply")
        entries += result.changeset.entries
        live |= result.live
    return ApplyResult(ChangeSet.of(entries), live)


async def wait_until_ready(
    cluster: Cluster, live: dict[ObjectRef, JsonObject], *, timeout_s: float
) -> NotReady:
    """Poll the objects that are not Current until they are, one is Failed, or the time is up;
    return those still not ready, each with why."""
    waiting = health.not_ready(live.values())
    with anyio.move_on_after(timeout_s):
        while waiting and not health.failed(waiting):
            await anyio.sleep(HEALTH_POLL_S)
            waiting = await recheck_health(cluster, [ref for ref, _ in waiting])
    return tuple(waiting)


async def recheck_health(
    cluster: Cluster, refs: Iterable[ObjectRef]
) -> list[tuple[ObjectRef, health.Health]]:
    """Read each object again and judge it: those still not Current, in the order given. An
    object that is gone is no longer waited for; one that cannot be read (403, a timeout) is
    Unknown, so it keeps being waited for and the reason shows."""
    refs = list(refs)
    verdicts: dict[int, health.Health] = {}
    limiter = anyio.CapacityLimiter(_HEALTH_READ_CONCURRENCY)

    async def judge(index: int, ref: ObjectRef) -> None:
        async with limiter:
            try:
                obj = await cluster.get(ref)
            except AioreconcileError as e:
                verdicts[index] = health.Health(health.HealthStatus.UNKNOWN, f"cannot read: {e}")
                return
        if obj is not None:
            verdicts[index] = health.compute(obj)

    async with anyio.create_task_group() as tasks:
        for index, ref in enumerate(refs):
            tasks.start_soon(judge, index, ref)
    return [
        (refs[i], verdict)
        for i, verdict in sorted(verdicts.items())
        if verdict.status is not health.HealthStatus.CURRENT
    ]


def not_ready_message(not_ready: NotReady, *, timeout_s: float) -> str:
    """The HealthCheckFailed message: how many and why it ended (a Failed object, or the
    timeout), then the first object that decided it, with why."""
    failed = health.failed(not_ready)
    if failed:
        others = len(not_ready) - len(failed)
        summary = f"{_count(failed)} failed" + (f", {others} more not ready" if others else "")
        ref, verdict = failed[0]
    else:
        summary = f"{_count(not_ready)} not ready after {timeout_s:g} s"
        ref, verdict = not_ready[0]
    return f"{summary}; {ref}: {verdict.status.value}: {verdict.message}"


def _count(objects: Sequence[object]) -> str:
    return f"{len(objects)} object" if len(objects) == 1 else f"{len(objects)} objects"
