"""Drift is judged on what the server stored for our fields, and an object stripped of our labels
is still ours: the controller in-process against the real apiserver and a real git daemon."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from kubernetes_asyncio import client

from aioreconcile.testing.pytest_plugin import Kube
from tests.e2e.test_controller import (
    Running,
    applied,
    config_map,
    controller,
    manifests,
    secret_env,  # noqa: F401  (a fixture the controller's receiver needs)
)
from tests.git.conftest import Upstream

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("secret_env")]

# Written the way people write them: bare numbers for quantities (stored as "1", "500m"),
# ports without a protocol (stored with TCP), targetPort as a number and as a name.
RESOURCES = {"limits": {"cpu": 1, "memory": "1Gi"}, "requests": {"cpu": 0.5, "memory": "512Mi"}}


def deployment(namespace: str) -> dict[str, Any]:
    labels = {"app": "web"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "nginx:1.27",
                            "ports": [{"containerPort": 80, "name": "http"}],
                            "resources": RESOURCES,
                        }
                    ]
                },
            },
        },
    }


def service(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "admin", "port": 9090, "targetPort": 9090},
            ],
        },
    }


def stateful_set(namespace: str) -> dict[str, Any]:
    labels = {"app": "db"}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": namespace},
        "spec": {
            "serviceName": "db",
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "db",
                            "image": "postgres:17",
                            "ports": [{"containerPort": 5432}],
                            "resources": {
                                "limits": {"cpu": "500m", "memory": "1Gi"},
                                "requests": {"cpu": 0.25},
                            },
                        }
                    ]
                },
            },
        },
    }


async def counters(running: Running) -> tuple[int, int, int]:
    state = await running.sync_state()
    return state["driftDetected"], state["driftHeals"], state["driftFightPauses"]


async def test_status_and_foreign_metadata_writes_are_no_drift_and_a_declared_change_is(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    repo = upstream("stored")
    sha = repo.commit(manifests(deployment(namespace), service(namespace), stateful_set(namespace)))
    async with controller(kube, namespace, repo, git_daemon, tmp_path) as running:
        await running.wait_for(lambda: applied(running, sha))
        apps, core = running.apps, running.core

        # Another manager's status writes (PATCH and PUT to the status subresource) and an
        # annotation we do not declare, more times than the fight guard's limit.
        for i in range(7):
            await apps.patch_namespaced_deployment_status(
                "web",
                namespace,
                {"status": {"observedGeneration": 1, "replicas": i, "readyReplicas": i}},
                field_manager="kube-controller-manager",
            )
            current = await apps.read_namespaced_stateful_set("db", namespace)
            current.status = client.V1StatefulSetStatus(replicas=i, ready_replicas=i)
            await apps.replace_namespaced_stateful_set_status(
                "db", namespace, current, field_manager="kube-controller-manager"
            )
            condition = {
                "type": "Probed",
                "status": "True",
                "reason": f"Round{i}",
                "message": "",
                "lastTransitionTime": "2026-12-01T00:00:00Z",
            }
            await core.patch_namespaced_service_status(
                "web", namespace, {"status": {"conditions": [condition]}}, field_manager="probe"
            )
            await apps.patch_namespaced_deployment(
                "web",
                namespace,
                {"metadata": {"annotations": {"deployment.kubernetes.io/revision": str(i)}}},
                field_manager="kube-controller-manager",
            )
        await anyio.sleep(1.5)

        assert await counters(running) == (0, 0, 0)

        # A real change of a declared field: healed, back to what Git says.
        await apps.patch_namespaced_deployment(
            "web",
            namespace,
            {
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [{"name": "web", "resources": {"limits": {"cpu": "2"}}}]
                        }
                    }
                }
            },
            field_manager="intruder",
        )

        async def healed() -> bool:
            web = await apps.read_namespaced_deployment("web", namespace)
            return bool(web.spec.template.spec.containers[0].resources.limits["cpu"] == "1")

        await running.wait_for(healed, seconds=10)

        # The Deployment's watch delivered every status and annotation event before this one:
        # one drift, one heal, no fight.
        async def counted() -> bool:
            return await counters(running) == (1, 1, 0)

        await running.wait_for(counted, seconds=5)


@pytest.mark.parametrize("label", ["aioreconcile.dev/sync", "app.kubernetes.io/managed-by"])
async def test_removing_our_label_is_drift_and_later_edits_are_still_healed(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    label: str,
) -> None:
    repo = upstream("unlabelled")
    sha = repo.commit(manifests(config_map("settings", namespace, v="git")))
    async with controller(kube, namespace, repo, git_daemon, tmp_path) as running:
        await running.wait_for(lambda: applied(running, sha))
        core = running.core

        await core.patch_namespaced_config_map(
            "settings",
            namespace,
            {"metadata": {"labels": {label: None}}},
            field_manager="intruder",
        )

        async def relabelled() -> bool:
            cm = await core.read_namespaced_config_map("settings", namespace)
            return label in (cm.metadata.labels or {})

        await running.wait_for(relabelled, seconds=10)

        # Still watched and still ours: a later edit is healed too.
        await core.patch_namespaced_config_map(
            "settings", namespace, {"data": {"v": "edited"}}, field_manager="intruder"
        )
        await running.wait_for(running.restored, seconds=10)
