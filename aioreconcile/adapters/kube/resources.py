"""The Sync custom resources on the API server (CRD mode): their watch, their status
subresource, their finalizer, Events about them, and the Secrets and ConfigMaps they refer to.

Secret values are decoded only into the mapping returned to the Git adapter, at the moment it
needs them; they are never logged, cached or put into an error message (errors name the
object, as ``DataRef.__str__`` does).
"""

import base64
import logging
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from typing import Final

import anyio.abc

from aioreconcile.adapters.kube.discovery import Discovery, Resource
from aioreconcile.adapters.kube.transport import MERGE_PATCH, KubeTransport
from aioreconcile.adapters.kube.watching import EventCallback, KindWatch
from aioreconcile.engine.config import DataRef
from aioreconcile.engine.errors import AioreconcileError, NotFoundError
from aioreconcile.engine.model import JsonObject, ObjectRef
from aioreconcile.engine.naming import (
    API_GROUP,
    INVENTORY_ANNOTATION,
    MANAGED_BY_LABEL,
    SYNC_LABEL,
)
from aioreconcile.engine.resources import FINALIZER

logger = logging.getLogger(__name__)

SYNCS: Final = Resource(API_GROUP, "v1alpha1", "Sync", "syncs", namespaced=True)
RECEIVERS: Final = Resource(API_GROUP, "v1alpha1", "Receiver", "receivers", namespaced=True)
SECRETS: Final = Resource("", "v1", "Secret", "secrets", namespaced=True)
REPORTING_CONTROLLER: Final = f"{API_GROUP}/controller"
# One attempt of a webhook's hand-off PATCH: the sender is waiting for the answer.
_REQUEST_LIMIT_S: Final = 2.0


def watch_resources(
    transport: KubeTransport, resource: Resource, *, namespace: str, on_event: EventCallback
) -> KindWatch:
    """List-then-watch every object of ``resource`` (no label selector: users create them),
    in one namespace or all; the first LIST is reported as ADDED events."""
    return KindWatch(
        transport,
        resource,
        on_event=on_event,
        label_selector="",
        emit_initial=True,
        namespace=namespace,
    )


async def read_data(transport: KubeTransport, ref: DataRef) -> Mapping[str, bytes] | None:
    """The data of a Secret or ConfigMap now, values as bytes; None when it does not exist."""
    plural = {"Secret": "secrets", "ConfigMap": "configmaps"}.get(ref.kind)
    if plural is None:
        raise AioreconcileError(f"cannot read data of a {ref.kind}")
    path = f"/api/v1/namespaces/{ref.namespace}/{plural}/{ref.name}"
    try:
        body = (await transport.request("GET", path)).body
    except NotFoundError:
        return None
    data: dict[str, bytes] = {}
    for key, value in (body.get("data") or {}).items():
        if ref.kind == "Secret":
            data[str(key)] = base64.b64decode(str(value))
        else:
            data[str(key)] = str(value).encode()
    for key, value in (body.get("binaryData") or {}).items():
        data[str(key)] = base64.b64decode(str(value))
    return data


class KubeSyncResources:
    """``reactor.ports.SyncResourceClient`` over the API server."""

    def __init__(self, transport: KubeTransport, discovery: Discovery) -> None:
        self._transport = transport
        self._discovery = discovery
        self._instance = f"{socket.gethostname()}-{os.getpid()}"[:128]

    async def write_status(self, namespace: str, name: str, status: JsonObject) -> None:
        path = SYNCS.object_path(name, namespace) + "/status"
        try:
            await self._transport.request(
                "PATCH", path, body={"status": status}, content_type=MERGE_PATCH
            )
        except NotFoundError:
            return  # deleted meanwhile

    async def set_finalizer(self, namespace: str, name: str, *, present: bool) -> None:
        """Add or remove our finalizer, with the object's resourceVersion as precondition (a
        conflict is raised and retried by the caller's queue)."""
        path = SYNCS.object_path(name, namespace)
        try:
            live = (await self._transport.request("GET", path)).body
        except NotFoundError:
            return
        metadata = live.get("metadata") or {}
        finalizers = [f for f in metadata.get("finalizers") or [] if f != FINALIZER]
        if present:
            finalizers.append(FINALIZER)
        if finalizers == list(metadata.get("finalizers") or []):
            return
        patch = {
            "metadata": {"finalizers": finalizers, "resourceVersion": metadata["resourceVersion"]}
        }
        try:
            await self._transport.request("PATCH", path, body=patch, content_type=MERGE_PATCH)
        except NotFoundError:
            return

    async def record_event(self, namespace: str, name: str, event: JsonObject) -> None:
        body: JsonObject = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            # client-go names an Event "<object>.<hex nanoseconds>"; a random suffix is as unique.
            "metadata": {"name": f"{name}.{secrets.token_hex(8)}", "namespace": namespace},
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self._instance,
            "regarding": {
                "apiVersion": SYNCS.api_version,
                "kind": SYNCS.kind,
                "namespace": namespace,
                "name": name,
            },
            **event,
        }
        await self._transport.request(
            "POST", f"/apis/events.k8s.io/v1/namespaces/{namespace}/events", body=body
        )

    async def release(self, refs: Sequence[ObjectRef], *, sync: str) -> int:
        """Remove our labels from each object still labelled as ``sync``'s; a label-less
        object is no longer found by our watches, listings or prunes."""
        released = 0
        for ref in refs:
            try:
                resource = await self._discovery.resolve(ref)
            except AioreconcileError:
                continue  # its kind is gone, and so is the object
            path = resource.object_path(ref.name, ref.namespace)
            try:
                live = (await self._transport.request("GET", path)).body
            except NotFoundError:
                continue
            labels = (live.get("metadata") or {}).get("labels") or {}
            if labels.get(SYNC_LABEL) != sync:
                continue  # another sync's now, or already released
            patch = {
                "metadata": {
                    "labels": {SYNC_LABEL: None, MANAGED_BY_LABEL: None},
                    "annotations": {INVENTORY_ANNOTATION: None},
                }
            }
            try:
                await self._transport.request("PATCH", path, body=patch, content_type=MERGE_PATCH)
            except NotFoundError:
                continue
            released += 1
        return released

    async def request_reconcile(self, namespace: str, name: str, patch: JsonObject) -> bool:
        """``reactor.ports.ReconcileRequester``: a merge patch of the Sync's metadata (the
        ``requestedAt`` hand-off of a webhook); False when the Sync is gone."""
        try:
            await patch_sync(self._transport, namespace, name, patch, time_limit=_REQUEST_LIMIT_S)
        except NotFoundError:
            return False
        return True

    async def write_receiver_status(self, namespace: str, name: str, status: JsonObject) -> None:
        path = RECEIVERS.object_path(name, namespace) + "/status"
        try:
            await self._transport.request(
                "PATCH", path, body={"status": status}, content_type=MERGE_PATCH
            )
        except NotFoundError:
            return

    async def read_data(self, ref: DataRef) -> Mapping[str, bytes] | None:
        return await read_data(self._transport, ref)

    async def delete_inventory(self, namespace: str, name: str) -> None:
        try:
            await self._transport.request(
                "DELETE", f"/api/v1/namespaces/{namespace}/configmaps/{name}"
            )
        except NotFoundError:
            return


async def run_watch(
    watch: KindWatch, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Run ``watch``, reporting started once its first LIST is done (every existing object has
    been reported)."""
    async with anyio.create_task_group() as tasks:
        await tasks.start(watch.run)
        await watch.synced.wait()
        task_status.started()


async def read_sync(transport: KubeTransport, namespace: str, name: str) -> JsonObject:
    return (await transport.request("GET", SYNCS.object_path(name, namespace))).body


async def patch_sync(
    transport: KubeTransport,
    namespace: str,
    name: str,
    patch: JsonObject,
    *,
    time_limit: float = 60.0,
) -> None:
    """A merge patch of the Sync (spec or metadata; a missing Sync raises NotFoundError)."""
    await transport.request(
        "PATCH",
        SYNCS.object_path(name, namespace),
        body=patch,
        content_type=MERGE_PATCH,
        time_limit=time_limit,
    )
