"""`aioreconcile run` with `wait: true` and with `serviceAccount`: real apiserver (RBAC on), real
git daemon, a custom resource whose status the test writes, real ServiceAccounts and Roles."""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from kubernetes_asyncio import client

from aioreconcile import runtime
from aioreconcile.adapters.kube.transport import MERGE_PATCH, KubeTransport
from aioreconcile.testing.pytest_plugin import Kube
from tests.e2e.test_controller import Running, config_map, manifests
from tests.git.conftest import Upstream

pytestmark = pytest.mark.integration


@asynccontextmanager
async def running_controller(
    kube: Kube, namespace: str, repo: Upstream, tmp_path: Path, syncs: list[dict[str, Any]]
) -> AsyncIterator[Running]:
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({"syncs": syncs}))
    settings = runtime.RunSettings(
        config=config_path,
        cluster=runtime.ClusterSettings(kubeconfig=kube.kubeconfig),
        listen_port=0,
        ops_port=0,
        namespace=namespace,
        cache_dir=tmp_path / "git-cache",
    )
    async with anyio.create_task_group() as tasks:
        ports = await tasks.start(runtime.run_controller, settings)
        url = str(syncs[0]["source"]["url"])
        yield Running(
            ports.webhooks,
            ports.ops,
            repo,
            url,
            namespace,
            client.CoreV1Api(kube.api),
            client.AppsV1Api(kube.api),
        )
        tasks.cancel_scope.cancel()


def sync(name: str, url: str, **fields: Any) -> dict[str, Any]:
    interval = fields.pop("interval", "1h")
    return {
        "name": name,
        "source": {"url": url, "ref": "main", "path": "deploy", "interval": interval},
        **fields,
    }


async def install_widget_crd(kube: Kube, group: str) -> None:
    """A namespaced ``Widget`` with a status subresource, so only the test writes its status."""
    extensions = client.ApiextensionsV1Api(kube.api)
    await extensions.create_custom_resource_definition(
        {
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
                        "subresources": {"status": {}},
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        }
    )
    with anyio.fail_after(20):
        while True:
            crd = await extensions.read_custom_resource_definition(f"widgets.{group}")
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            if conditions.get("Established") == "True":
                return
            await anyio.sleep(0.1)


def widget(group: str, namespace: str, size: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": namespace},
        "spec": {"size": size},
    }


async def set_ready(
    kube: Kube, group: str, namespace: str, status: str, reason: str, *, stalled: bool = False
) -> None:
    """Write the Widget's conditions through the status subresource, as its controller would:
    Ready, and with ``stalled`` also Stalled=True (kstatus Failed)."""
    conditions = [{"type": "Ready", "status": status, "reason": reason, "message": "by the test"}]
    if stalled:
        conditions.append({"type": "Stalled", "status": "True", "reason": "BadSpec"})
    async with await KubeTransport.connect(kube.kubeconfig) as transport:
        await transport.request(
            "PATCH",
            f"/apis/{group}/v1/namespaces/{namespace}/widgets/w/status",
            body={"status": {"conditions": conditions}},
            content_type=MERGE_PATCH,
        )


async def test_waiting_sync_fails_its_health_check_then_succeeds_and_blocks_nothing(
    kube: Kube,
    namespace: str,
    upstream: Any,
    git_daemon: str,
    tmp_path: Path,
) -> None:
    group = f"{namespace}.health.test"
    await install_widget_crd(kube, group)
    app, other = upstream("waiting"), upstream("other")
    first = app.commit(
        manifests(widget(group, namespace, 1), config_map("settings", namespace, v="git"))
    )
    other.commit(manifests(config_map("other", namespace, v="1")))
    timeout_s = 10.0
    syncs = [
        sync(
            "app",
            f"{git_daemon}{app.name}.git",
            wait=True,
            timeout=f"{timeout_s:g}s",
            interval="1s",
        ),
        sync("other", f"{git_daemon}{other.name}.git", interval="1s"),
    ]
    async with running_controller(kube, namespace, app, tmp_path, syncs) as running:

        async def state_is(reason: str, sync: str = "app") -> bool:
            return bool((await running.sync_state(sync))["reason"] == reason)

        # A Widget with no status has nothing to wait for: the first apply is Ready.
        await running.wait_for(lambda: state_is("ReconciliationSucceeded"))
        assert (await running.sync_state())["lastAppliedRevision"] == first

        await set_ready(kube, group, namespace, "False", "Provisioning")
        second = app.commit(
            manifests(widget(group, namespace, 2), config_map("settings", namespace, v="git"))
        )
        await running.wait_for(lambda: state_is("Progressing"))
        waiting_since = time.monotonic()

        # While it waits, a drift of the same sync is healed and another sync applies.
        await running.core.patch_namespaced_config_map(
            "settings", namespace, {"data": {"v": "edited"}}, field_manager="intruder"
        )
        other_sha = other.commit(manifests(config_map("other", namespace, v="2")))
        await running.wait_for(running.restored, seconds=3)

        async def other_applied() -> bool:
            return bool((await running.sync_state("other"))["lastAppliedRevision"] == other_sha)

        await running.wait_for(other_applied, seconds=4)
        assert await state_is("Progressing")

        await running.wait_for(lambda: state_is("HealthCheckFailed"), seconds=timeout_s + 5)
        waited = time.monotonic() - waiting_since
        failed = await running.sync_state()
        assert timeout_s - 1 <= waited <= timeout_s + 4
        assert failed["lastAttemptedRevision"] == second
        assert failed["lastAppliedRevision"] == first
        assert f"Widget.{group}/{namespace}/w" in failed["lastError"]
        assert "Provisioning" in failed["lastError"]

        # Not retried with backoff: the next poll applies and judges again, and now it is Ready.
        await set_ready(kube, group, namespace, "True", "Provisioned")

        async def second_applied() -> bool:
            state = await running.sync_state()
            return bool(
                state["reason"] == "ReconciliationSucceeded"
                and state["lastAppliedRevision"] == second
            )

        await running.wait_for(second_applied, seconds=timeout_s + 5)

        # Stalled will not heal by waiting: a new commit fails at once, not after the timeout.
        await set_ready(kube, group, namespace, "False", "Broken", stalled=True)
        third = app.commit(
            manifests(widget(group, namespace, 3), config_map("settings", namespace, v="git"))
        )

        async def third_failed() -> bool:
            state = await running.sync_state()
            return bool(
                state["reason"] == "HealthCheckFailed" and state["lastAttemptedRevision"] == third
            )

        await running.wait_for(third_failed, seconds=timeout_s - 3)
        assert "1 object failed" in (await running.sync_state())["lastError"]
    await client.ApiextensionsV1Api(kube.api).delete_custom_resource_definition(f"widgets.{group}")


def cluster_role(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
    }


async def test_sync_with_service_account_applies_what_its_role_allows_and_nothing_else(
    kube: Kube,
    namespace: str,
    upstream: Any,
    git_daemon: str,
    tmp_path: Path,
) -> None:
    core, rbac = client.CoreV1Api(kube.api), client.RbacAuthorizationV1Api(kube.api)
    tenant_ns = f"{namespace}-tenant"
    await core.create_namespace({"metadata": {"name": tenant_ns}})
    await grant_config_maps(kube, tenant_ns, "deployer")
    tenant, admin = upstream("tenant"), upstream("admin")
    forbidden, allowed = f"{namespace}-tenant-reader", f"{namespace}-admin-reader"
    tenant.commit(
        manifests(
            config_map("a", tenant_ns, v="1"),
            config_map("b", tenant_ns, v="1"),
            cluster_role(forbidden),
        )
    )
    admin_sha = admin.commit(
        manifests(cluster_role(allowed), config_map("settings", namespace, v="git"))
    )
    syncs = [
        # A bare name: the account lives in targetNamespace.
        sync(
            "tenant",
            f"{git_daemon}{tenant.name}.git",
            targetNamespace=tenant_ns,
            serviceAccount="deployer",
        ),
        sync("admin", f"{git_daemon}{admin.name}.git"),
    ]
    async with running_controller(kube, namespace, tenant, tmp_path, syncs) as running:

        async def reason_of(sync: str) -> str:
            return str((await running.sync_state(sync))["reason"])

        async def tenant_failed() -> bool:
            return await reason_of("tenant") == "ApplyFailed"

        async def admin_applied() -> bool:
            return bool((await running.sync_state("admin"))["lastAppliedRevision"] == admin_sha)

        await running.wait_for(tenant_failed)
        await running.wait_for(admin_applied)

        error = (await running.sync_state("tenant"))["lastError"]
        assert f"ClusterRole.rbac.authorization.k8s.io/{forbidden}" in error
        assert "forbidden" in error
        assert f"system:serviceaccount:{tenant_ns}:deployer" in error
        for name in ("a", "b"):
            stored = await core.read_namespaced_config_map(name, tenant_ns)
            assert stored.data == {"v": "1"}
        with pytest.raises(client.exceptions.ApiException) as absent:
            await rbac.read_cluster_role(forbidden)
        assert absent.value.status == 404
        # The sync without an account is the controller itself: its ClusterRole is there.
        assert (await rbac.read_cluster_role(allowed)).metadata.name == allowed
        # The inventory is the controller's bookkeeping, in its namespace, written as itself
        # (the account may write ConfigMaps only in its own namespace).
        inventory = await core.read_namespaced_config_map(
            "aioreconcile-inventory-tenant", namespace
        )
        assert "a" in inventory.data["entries.json"]

        # A drift of an allowed object is healed through the account.
        await core.patch_namespaced_config_map(
            "a", tenant_ns, {"data": {"v": "edited"}}, field_manager="intruder"
        )

        async def healed() -> bool:
            stored = await core.read_namespaced_config_map("a", tenant_ns)
            return bool(stored.data == {"v": "1"})

        await running.wait_for(healed, seconds=10)
    await rbac.delete_cluster_role(allowed)
    await core.delete_namespace(tenant_ns)


async def grant_config_maps(kube: Kube, namespace: str, account: str) -> None:
    """A ServiceAccount allowed everything on ConfigMaps in ``namespace``, nothing else."""
    core, rbac = client.CoreV1Api(kube.api), client.RbacAuthorizationV1Api(kube.api)
    await core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    await rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "config-maps"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}],
        },
    )
    await rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "config-maps"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "config-maps",
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    )
