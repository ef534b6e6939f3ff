"""A sync with a service account acts as that account on the real apiserver (RBAC on): what its
Role allows is applied, anything else fails alone with 403, and the controller's own identity
is untouched."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from kubernetes_asyncio import client

from aioreconcile.adapters.kube.cluster import KubeCluster
from aioreconcile.engine.applying import ApplyOptions
from aioreconcile.engine.changeset import Action
from aioreconcile.engine.config import ServiceAccountRef
from aioreconcile.engine.model import Manifest, ObjectRef
from aioreconcile.testing.pytest_plugin import Kube

pytestmark = pytest.mark.integration


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


def manifest(body: dict[str, Any]) -> Manifest:
    return Manifest(ObjectRef.of(body), body, origin="test")


def config_map(name: str, namespace: str) -> Manifest:
    return manifest(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"k": name},
        }
    )


def cluster_role(name: str) -> Manifest:
    return manifest(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
        }
    )


@pytest.fixture
async def cluster(kube: Kube) -> AsyncIterator[KubeCluster]:
    async with await KubeCluster.connect(kube.kubeconfig) as connected:
        await connected.refresh_discovery()
        yield connected


async def test_forbidden_object_fails_with_403_and_the_allowed_ones_are_applied(
    kube: Kube, namespace: str, cluster: KubeCluster
) -> None:
    await grant_config_maps(kube, namespace, "deployer")
    tenant = cluster.impersonating(ServiceAccountRef(namespace, "deployer"))
    options = ApplyOptions(sync="tenant", revision="r1")
    role = cluster_role(f"{namespace}-reader")

    result = await tenant.apply(
        [config_map("a", namespace), config_map("b", namespace), role], options
    )

    by_name = {e.ref.name: e for e in result.changeset.entries}
    assert by_name["a"].action is Action.CREATED
    assert by_name["b"].action is Action.CREATED
    refused = by_name[role.ref.name]
    assert refused.action is Action.FAILED
    assert refused.error is not None
    assert "forbidden" in refused.error.lower()
    assert role.ref.name in refused.error
    assert f"system:serviceaccount:{namespace}:deployer" in refused.error
    rbac = client.RbacAuthorizationV1Api(kube.api)
    with pytest.raises(client.exceptions.ApiException) as absent:
        await rbac.read_cluster_role(role.ref.name)
    assert absent.value.status == 404

    # The controller's own identity over the same pool is not narrowed by the view.
    admin = await cluster.apply([role], options)
    assert [e.action for e in admin.changeset.entries] == [Action.CREATED]
    await rbac.delete_cluster_role(role.ref.name)


async def test_reads_and_deletes_are_made_as_the_account_too(
    kube: Kube, namespace: str, cluster: KubeCluster
) -> None:
    await grant_config_maps(kube, namespace, "deployer")
    tenant = cluster.impersonating(ServiceAccountRef(namespace, "deployer"))
    options = ApplyOptions(sync="tenant", revision="r1")
    elsewhere = config_map(f"{namespace}-outside", "default")
    await cluster.apply([elsewhere], options)  # as the controller: allowed

    assert await tenant.get(config_map("a", namespace).ref) is None  # allowed, absent
    with pytest.raises(Exception, match="forbidden"):
        await tenant.get(elsewhere.ref)
    deleted = await tenant.delete([elsewhere.ref], options)

    (entry,) = deleted.entries
    assert entry.action is Action.FAILED
    assert entry.error is not None
    assert "forbidden" in entry.error
    assert await cluster.get(elsewhere.ref) is not None
    await cluster.delete([elsewhere.ref], options)


async def test_the_controller_needs_the_impersonate_verb_and_nothing_of_the_accounts_rights(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """The controller as a token-authenticated ServiceAccount with no rights on ConfigMaps:
    refused until it may ``impersonate`` serviceaccounts and groups, then the tenant's own
    rights are what count."""
    await grant_config_maps(kube, namespace, "deployer")
    core, rbac = client.CoreV1Api(kube.api), client.RbacAuthorizationV1Api(kube.api)
    await core.create_namespaced_service_account(namespace, {"metadata": {"name": "controller"}})
    issued = await core.create_namespaced_service_account_token(
        "controller", namespace, {"spec": {"expirationSeconds": 600}}
    )
    document = yaml.safe_load(kube.kubeconfig.read_text())
    document["users"][0]["user"] = {"token": issued.status.token}
    kubeconfig = tmp_path / "controller.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(document))
    options = ApplyOptions(sync="tenant", revision="r1")
    wanted = config_map("a", namespace)

    async with await KubeCluster.connect(kubeconfig) as controller:
        await controller.refresh_discovery()
        tenant = controller.impersonating(ServiceAccountRef(namespace, "deployer"))

        refused = await tenant.apply([wanted], options)
        (entry,) = refused.changeset.entries
        assert entry.action is Action.FAILED
        assert entry.error is not None
        assert "cannot impersonate" in entry.error

        role = f"{namespace}-impersonator"
        await rbac.create_cluster_role(
            {
                "metadata": {"name": role},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["serviceaccounts", "groups"],
                        "verbs": ["impersonate"],
                    }
                ],
            }
        )
        await rbac.create_cluster_role_binding(
            {
                "metadata": {"name": role},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role,
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "controller", "namespace": namespace}
                ],
            }
        )
        try:
            with anyio.fail_after(10):  # RBAC reaches the authorizer through its informers
                while True:
                    applied = await tenant.apply([wanted], options)
                    (entry,) = applied.changeset.entries
                    if entry.action is not Action.FAILED:
                        break
                    await anyio.sleep(0.1)
            assert entry.action is Action.CREATED
            # The controller itself still may not touch ConfigMaps: only the account's rights.
            with pytest.raises(Exception, match="forbidden"):
                await controller.get(wanted.ref)
        finally:
            await rbac.delete_cluster_role_binding(role)
            await rbac.delete_cluster_role(role)
