"""Every object the chart renders is accepted by the real apiserver: a server-side dry-run apply
(which refuses fields the schema does not declare) of each, for the values matrix of
test_render. Only the ServiceMonitor is left out: its CRD (prometheus-operator's) is not here."""

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client

from aioreconcile.adapters.kube.cluster import KubeCluster
from aioreconcile.engine.applying import ApplyOptions
from aioreconcile.engine.changeset import Action
from aioreconcile.engine.model import Manifest, ObjectRef
from aioreconcile.testing.pytest_plugin import Kube
from tests.chart.rendering import render
from tests.chart.test_render import MATRIX

pytestmark = pytest.mark.integration


@pytest.fixture
async def cluster(kube: Kube) -> AsyncIterator[KubeCluster]:
    async with await KubeCluster.connect(kube.kubeconfig) as connected:
        await connected.refresh_discovery()
        yield connected


@pytest.mark.parametrize("values", MATRIX.values(), ids=MATRIX.keys())
async def test_every_rendered_object_passes_a_server_side_dry_run(
    kube: Kube, cluster: KubeCluster, namespace: str, values: dict[str, Any]
) -> None:
    teams = []
    for _ in values.get("rbac", {}).get("namespaces", []):
        teams.append(f"t-{secrets.token_hex(4)}")
        await client.CoreV1Api(kube.api).create_namespace({"metadata": {"name": teams[-1]}})
    if teams:
        values = {**values, "rbac": {**values["rbac"], "namespaces": teams}}
        if "watchNamespace" in values:
            values["watchNamespace"] = teams[0]
    release = f"r{secrets.token_hex(3)}"
    objects = [
        o
        for o in render(values, release=release, namespace=namespace)
        if o["kind"] != "ServiceMonitor"
    ]
    manifests = [Manifest(ObjectRef.of(o), o, origin=o["kind"]) for o in objects]
    result = await cluster.apply(manifests, ApplyOptions(sync="chart", revision="r", dry_run=True))
    failed = [(str(e.ref), e.error) for e in result.changeset.entries if e.action is Action.FAILED]
    assert failed == []
    assert {e.ref for e in result.changeset.entries} == {m.ref for m in manifests}
