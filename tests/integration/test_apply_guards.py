"""What an apply leaves alone, refuses, or recreates, against the real apiserver: objects opted
out with ``reconcile: disabled``, objects of another sync, and changes of immutable fields."""

import textwrap
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from aioreconcile import runtime
from aioreconcile.engine.changeset import Action
from aioreconcile.engine.outcomes import SyncOutcome
from aioreconcile.testing.pytest_plugin import Kube

pytestmark = pytest.mark.integration


def write(directory: Path, name: str, text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(textwrap.dedent(text))


def directory(kube: Kube, path: Path, sync: str) -> runtime.DirectorySettings:
    return runtime.DirectorySettings(
        path=path, sync=sync, cluster=runtime.ClusterSettings(kubeconfig=kube.kubeconfig)
    )


async def apply(kube: Kube, path: Path, sync: str) -> SyncOutcome:
    return await runtime.apply_directory(directory(kube, path, sync))


def entry(outcome: SyncOutcome, name: str) -> Any:
    return next(e for e in outcome.changeset.entries if e.ref.name == name)


def config_map(namespace: str, name: str, value: str, annotations: str = "{}") -> str:
    return textwrap.dedent(f"""\
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {{name: {name}, namespace: {namespace}, annotations: {annotations}}}
        data: {{v: "{value}"}}
        """)


async def test_a_new_commit_skips_an_object_annotated_reconcile_disabled(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    write(
        tmp_path, "cm.yaml", config_map(namespace, "held", "1") + config_map(namespace, "free", "1")
    )
    assert (await apply(kube, tmp_path, "guards")).ok
    core = client.CoreV1Api(kube.api)
    await core.patch_namespaced_config_map(
        "held",
        namespace,
        {"metadata": {"annotations": {"aioreconcile.dev/reconcile": "disabled"}}},
        field_manager="operator",
    )
    write(
        tmp_path, "cm.yaml", config_map(namespace, "held", "2") + config_map(namespace, "free", "2")
    )

    diffs = {
        d.ref.name: d.diff
        for d in await runtime.diff_directory(directory(kube, tmp_path, "guards"))
    }
    assert diffs["held"] == ""  # what apply would do: nothing
    assert "+  v: '2'" in diffs["free"]

    outcome = await apply(kube, tmp_path, "guards")

    assert entry(outcome, "held").action is Action.SKIPPED
    assert "aioreconcile.dev/reconcile: disabled" in (entry(outcome, "held").error or "")
    assert entry(outcome, "free").action is Action.CONFIGURED
    assert (await core.read_namespaced_config_map("held", namespace)).data == {"v": "1"}
    assert outcome.ok  # skipping is no failure


async def test_an_object_of_another_sync_fails_naming_both_and_the_rest_applies(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write(first, "cm.yaml", config_map(namespace, "shared", "first"))
    assert (await apply(kube, first, "first")).ok
    write(
        second,
        "cm.yaml",
        config_map(namespace, "shared", "second") + config_map(namespace, "own", "second"),
    )

    refused = await apply(kube, second, "second")

    shared = entry(refused, "shared")
    assert shared.action is Action.FAILED
    assert "'first'" in (shared.error or "")
    assert "'second'" in (shared.error or "")
    assert "aioreconcile.dev/adopt: enabled" in (shared.error or "")
    assert entry(refused, "own").action is Action.CREATED
    core = client.CoreV1Api(kube.api)
    kept = await core.read_namespaced_config_map("shared", namespace)
    assert (kept.data, kept.metadata.labels["aioreconcile.dev/sync"]) == ({"v": "first"}, "first")

    # Annotated in the second sync's source: taken over.
    write(
        second,
        "cm.yaml",
        config_map(namespace, "shared", "second", '{"aioreconcile.dev/adopt": enabled}')
        + config_map(namespace, "own", "second"),
    )
    adopted = await apply(kube, second, "second")

    assert entry(adopted, "shared").action is Action.CONFIGURED, adopted
    taken = await core.read_namespaced_config_map("shared", namespace)
    assert (taken.data, taken.metadata.labels["aioreconcile.dev/sync"]) == (
        {"v": "second"},
        "second",
    )


def job(namespace: str, image: str, annotations: str = "{}") -> str:
    return f"""\
        apiVersion: batch/v1
        kind: Job
        metadata: {{name: migrate, namespace: {namespace}, annotations: {annotations}}}
        spec:
          template:
            spec:
              restartPolicy: Never
              containers: [{{name: migrate, image: "{image}"}}]
        """


def deployment(namespace: str, app: str) -> str:
    return f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: web, namespace: {namespace}}}
        spec:
          selector: {{matchLabels: {{app: {app}}}}}
          template:
            metadata: {{labels: {{app: {app}}}}}
            spec:
              containers: [{{name: web, image: nginx:1.27}}]
        """


def service(namespace: str, cluster_ip: str) -> str:
    return f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: web, namespace: {namespace}}}
        spec:
          clusterIP: {cluster_ip}
          selector: {{app: web}}
          ports: [{{port: 80, targetPort: 8080}}]
        """


@pytest.mark.parametrize(
    ("make", "before", "after", "kind", "field"),
    [
        pytest.param(
            job, "busybox:1.36", "busybox:1.37", "Job.batch", "spec.template", id="job-template"
        ),
        pytest.param(deployment, "web", "web2", "Deployment.apps", "spec.selector", id="selector"),
        pytest.param(
            service, "10.96.7.7", "10.96.7.8", "Service", "spec.clusterIP", id="cluster-ip"
        ),
    ],
)
async def test_an_immutable_field_change_fails_naming_the_object_and_the_field(
    kube: Kube,
    namespace: str,
    tmp_path: Path,
    make: Any,
    before: str,
    after: str,
    kind: str,
    field: str,
) -> None:
    write(tmp_path, "object.yaml", make(namespace, before))
    assert (await apply(kube, tmp_path, "immutable")).ok
    write(tmp_path, "object.yaml", make(namespace, after))

    outcome = await apply(kube, tmp_path, "immutable")

    (failed,) = outcome.changeset.failed
    error = failed.error or ""
    assert f"{kind}/{namespace}/" in error, error
    assert f"immutable field {field}" in error, error
    assert "aioreconcile.dev/force: enabled" in error


async def test_force_annotation_recreates_an_object_whose_immutable_field_changed(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    force = '{"aioreconcile.dev/force": enabled}'
    write(tmp_path, "job.yaml", job(namespace, "busybox:1.36", force))
    assert (await apply(kube, tmp_path, "force")).ok
    batch = client.BatchV1Api(kube.api)
    old_uid = (await batch.read_namespaced_job("migrate", namespace)).metadata.uid
    write(tmp_path, "job.yaml", job(namespace, "busybox:1.37", force))

    outcome = await apply(kube, tmp_path, "force")

    assert outcome.ok, outcome.changeset.failed
    assert entry(outcome, "migrate").action is Action.CREATED
    new = await batch.read_namespaced_job("migrate", namespace)
    assert new.metadata.uid != old_uid
    assert new.spec.template.spec.containers[0].image == "busybox:1.37"
