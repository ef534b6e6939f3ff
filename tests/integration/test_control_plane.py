"""The real control plane behaves like the Kubernetes API every later part relies on."""

import secrets
from typing import Any

import anyio
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from aioreconcile.testing.pytest_plugin import Kube

pytestmark = pytest.mark.integration

APPLY = "application/apply-patch+yaml"


def _config_map(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


async def test_namespace_and_configmap_can_be_created_and_read(kube: Kube, namespace: str) -> None:
    core = client.CoreV1Api(kube.api)
    await core.create_namespaced_config_map(
        namespace, _config_map("settings", namespace, {"a": "1"})
    )

    stored = await core.read_namespaced_config_map("settings", namespace)
    ns = await core.read_namespace(namespace)

    assert stored.data == {"a": "1"}
    assert ns.status.phase == "Active"


async def test_second_identical_server_side_apply_keeps_resource_version(
    kube: Kube, namespace: str
) -> None:
    core = client.CoreV1Api(kube.api)
    body = _config_map("applied", namespace, {"key": "value"})

    first = await core.patch_namespaced_config_map(
        "applied", namespace, body, field_manager="aioreconcile", force=True, _content_type=APPLY
    )
    second = await core.patch_namespaced_config_map(
        "applied", namespace, body, field_manager="aioreconcile", force=True, _content_type=APPLY
    )

    assert second.metadata.resource_version == first.metadata.resource_version
    managers = {(m.manager, m.operation) for m in second.metadata.managed_fields}
    assert ("aioreconcile", "Apply") in managers


async def test_watch_receives_added_modified_deleted_in_order(kube: Kube, namespace: str) -> None:
    core = client.CoreV1Api(kube.api)
    listed = await core.list_namespaced_config_map(namespace)
    seen: list[tuple[str, str]] = []

    async def collect() -> None:
        async with watch.Watch() as stream:
            async for event in stream.stream(
                core.list_namespaced_config_map,
                namespace,
                resource_version=listed.metadata.resource_version,
                timeout_seconds=30,
            ):
                obj = event["object"]
                if obj.metadata.name != "watched":
                    continue
                seen.append((event["type"], (obj.data or {}).get("v", "")))
                if event["type"] == "DELETED":
                    return

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(collect)
            await core.create_namespaced_config_map(
                namespace, _config_map("watched", namespace, {"v": "1"})
            )
            await core.patch_namespaced_config_map("watched", namespace, {"data": {"v": "2"}})
            await core.delete_namespaced_config_map("watched", namespace)

    assert seen == [("ADDED", "1"), ("MODIFIED", "2"), ("DELETED", "2")]


async def test_crd_becomes_established_then_its_custom_resource_applies(
    kube: Kube, namespace: str
) -> None:
    group = f"{secrets.token_hex(3)}.example.aioreconcile.dev"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer"}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    extensions = client.ApiextensionsV1Api(kube.api)
    await extensions.create_custom_resource_definition(crd)

    with anyio.fail_after(20):
        while True:
            stored = await extensions.read_custom_resource_definition(f"widgets.{group}")
            conditions = {c.type: c.status for c in (stored.status.conditions or [])}
            if conditions.get("Established") == "True":
                break
            await anyio.sleep(0.05)

    custom = client.CustomObjectsApi(kube.api)
    widget = {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": namespace},
        "spec": {"size": 3},
    }
    # The generated client maps no type for 201 (created by apply), so read the object back.
    await custom.patch_namespaced_custom_object(
        group,
        "v1",
        namespace,
        "widgets",
        "w1",
        widget,
        field_manager="aioreconcile",
        force=True,
        _content_type=APPLY,
    )
    stored_widget = await custom.get_namespaced_custom_object(
        group, "v1", namespace, "widgets", "w1"
    )
    assert stored_widget["spec"] == {"size": 3}
    assert stored_widget["metadata"]["managedFields"][0]["manager"] == "aioreconcile"


async def test_client_reconnects_after_apiserver_restart(kube: Kube, namespace: str) -> None:
    core = client.CoreV1Api(kube.api)
    await core.create_namespaced_config_map(
        namespace, _config_map("survivor", namespace, {"k": "v"})
    )

    took = await kube.control_plane.restart_apiserver()

    # The pooled keep-alive connection died with the old process; at most one request may see
    # that, the next must reach the new process with the same client.
    survivor = None
    for _ in range(2):
        try:
            survivor = await core.read_namespaced_config_map("survivor", namespace)
            break
        except ApiException:
            raise
        except Exception:
            continue
    assert survivor is not None
    assert survivor.data == {"k": "v"}
    assert took < kube.control_plane.startup_timeout
