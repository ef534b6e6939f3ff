"""The chart's RBAC, created on the real apiserver and asked with SubjectAccessReviews: what the
controller's ServiceAccount may and may not do in each mode is decided by kube-apiserver's own
RBAC authorizer, not by reading the rendered rules."""

import secrets
from typing import Any

import pytest
from kubernetes_asyncio import client

from aioreconcile.testing.pytest_plugin import Kube
from tests.chart.rendering import render

pytestmark = pytest.mark.integration

RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


async def install_rbac(kube: Kube, namespace: str, values: dict[str, Any]) -> str:
    """Create the ServiceAccount and RBAC the chart renders; return the account's user name."""
    release = f"r{secrets.token_hex(3)}"
    core, rbac = client.CoreV1Api(kube.api), client.RbacAuthorizationV1Api(kube.api)
    create = {
        "ServiceAccount": lambda o: core.create_namespaced_service_account(
            o["metadata"]["namespace"], o
        ),
        "ClusterRole": rbac.create_cluster_role,
        "ClusterRoleBinding": rbac.create_cluster_role_binding,
        "Role": lambda o: rbac.create_namespaced_role(o["metadata"]["namespace"], o),
        "RoleBinding": lambda o: rbac.create_namespaced_role_binding(o["metadata"]["namespace"], o),
    }
    for o in render(values, release=release, namespace=namespace):
        if o["kind"] in RBAC_KINDS:
            await create[o["kind"]](o)
    return f"system:serviceaccount:{namespace}:{release}-aioreconcile"


async def allowed(kube: Kube, user: str, **attributes: str) -> bool:
    review = await client.AuthorizationV1Api(kube.api).create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "resourceAttributes": attributes,
            },
        }
    )
    return bool(review.status.allowed)


async def new_namespace(kube: Kube) -> str:
    name = f"t-{secrets.token_hex(4)}"
    await client.CoreV1Api(kube.api).create_namespace({"metadata": {"name": name}})
    return name


async def test_namespaced_mode_writes_only_in_its_namespaces_and_watches_everywhere(
    kube: Kube, namespace: str
) -> None:
    team, other = await new_namespace(kube), await new_namespace(kube)
    user = await install_rbac(
        kube,
        namespace,
        {"rbac": {"scope": "namespaced", "namespaces": [team]}, "config": {"syncs": []}},
    )
    deployments = {"group": "apps", "resource": "deployments"}
    cases: list[tuple[bool, dict[str, str]]] = [
        (True, {"verb": "create", "namespace": team, **deployments}),
        (True, {"verb": "delete", "namespace": team, **deployments}),
        (False, {"verb": "create", "namespace": other, **deployments}),
        (False, {"verb": "create", **deployments}),  # cluster-wide
        # The drift watch: list and watch everywhere, nothing more.
        (True, {"verb": "list", **deployments}),
        (True, {"verb": "watch", "namespace": other, **deployments}),
        (False, {"verb": "get", "namespace": other, "resource": "secrets"}),
        (
            False,
            {"verb": "create", "resource": "clusterroles", "group": "rbac.authorization.k8s.io"},
        ),
        # Its own bookkeeping in the release namespace.
        (True, {"verb": "create", "namespace": namespace, "resource": "configmaps"}),
        (
            True,
            {
                "verb": "update",
                "namespace": namespace,
                "resource": "leases",
                "group": "coordination.k8s.io",
            },
        ),
        (
            False,
            {
                "verb": "create",
                "namespace": other,
                "resource": "leases",
                "group": "coordination.k8s.io",
            },
        ),
        # The CRDs' status, and events, where it works.
        (
            True,
            {
                "verb": "patch",
                "namespace": team,
                "resource": "syncs",
                "subresource": "status",
                "group": "aioreconcile.dev",
            },
        ),
        (
            False,
            {
                "verb": "patch",
                "namespace": other,
                "resource": "syncs",
                "subresource": "status",
                "group": "aioreconcile.dev",
            },
        ),
        (
            True,
            {"verb": "create", "namespace": team, "resource": "events", "group": "events.k8s.io"},
        ),
        # Impersonation: the accounts of its namespaces and their groups only.
        (
            True,
            {
                "verb": "impersonate",
                "namespace": team,
                "resource": "serviceaccounts",
                "name": "deployer",
            },
        ),
        (
            False,
            {
                "verb": "impersonate",
                "namespace": other,
                "resource": "serviceaccounts",
                "name": "deployer",
            },
        ),
        (
            True,
            {"verb": "impersonate", "resource": "groups", "name": f"system:serviceaccounts:{team}"},
        ),
        (True, {"verb": "impersonate", "resource": "groups", "name": "system:authenticated"}),
        (
            False,
            {
                "verb": "impersonate",
                "resource": "groups",
                "name": f"system:serviceaccounts:{other}",
            },
        ),
        (False, {"verb": "impersonate", "resource": "groups", "name": "system:masters"}),
        (False, {"verb": "impersonate", "resource": "users", "name": "admin"}),
    ]
    answers = [(await allowed(kube, user, **attributes), attributes) for _, attributes in cases]
    wrong = [a for (want, _), (got, a) in zip(cases, answers, strict=True) if want != got]
    assert wrong == [], wrong


async def test_cluster_mode_default_is_flux_like_and_apply_rules_narrow_it(
    kube: Kube, namespace: str
) -> None:
    other = await new_namespace(kube)
    clusterroles = {"resource": "clusterroles", "group": "rbac.authorization.k8s.io"}
    broad = await install_rbac(kube, namespace, {})
    assert await allowed(kube, broad, verb="create", **clusterroles)
    assert await allowed(kube, broad, verb="delete", namespace=other, resource="secrets")
    assert await allowed(kube, broad, verb="impersonate", resource="groups", name="x")

    narrow_rules = [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["*"]}]
    narrow = await install_rbac(
        kube, namespace, {"rbac": {"applyRules": narrow_rules}, "config": {"syncs": []}}
    )
    assert await allowed(
        kube, narrow, verb="create", namespace=other, group="apps", resource="deployments"
    )
    assert not await allowed(kube, narrow, verb="create", **clusterroles)
    assert not await allowed(kube, narrow, verb="create", namespace=other, resource="configmaps")
    # File mode: no Secret read for itself; its inventories in the release namespace.
    assert not await allowed(kube, narrow, verb="get", namespace=other, resource="secrets")
    assert await allowed(kube, narrow, verb="create", namespace=namespace, resource="configmaps")
    assert await allowed(
        kube,
        narrow,
        verb="patch",
        namespace=other,
        resource="syncs",
        subresource="status",
        group="aioreconcile.dev",
    )
