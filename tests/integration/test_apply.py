"""The sync engine against the real apiserver: staged SSA, no-op detection, prune, bad input."""

import secrets
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import yaml
from kubernetes_asyncio import client

from aioreconcile import runtime
from aioreconcile.adapters.kube.cluster import KubeCluster
from aioreconcile.engine.applying import ApplyOptions
from aioreconcile.engine.changeset import Action, ChangeSetEntry
from aioreconcile.engine.model import JsonObject, Manifest, ObjectRef
from aioreconcile.engine.outcomes import Reason, SyncOutcome
from aioreconcile.engine.sources import RenderSpec
from aioreconcile.testing.pytest_plugin import Kube

pytestmark = pytest.mark.integration


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def config_map(name: str, namespace: str, **data: str) -> str:
    """A ConfigMap document (starting with ``---``) to concatenate with others."""
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }
    return "---\n" + yaml.safe_dump(body)


def settings(kube: Kube, path: Path, **overrides: Any) -> runtime.DirectorySettings:
    values: dict[str, Any] = {
        "path": path,
        "sync": "test-" + path.name,
        "cluster": runtime.ClusterSettings(kubeconfig=kube.kubeconfig),
    }
    values.update(overrides)
    return runtime.DirectorySettings(**values)


def actions(outcome: SyncOutcome) -> dict[str, str]:
    return {f"{e.ref.kind}/{e.ref.name}": e.action.value for e in outcome.changeset.entries}


async def test_first_apply_creates_and_second_apply_writes_nothing(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    write(
        tmp_path, "cms.yaml", config_map("a", namespace, k="1") + config_map("b", namespace, k="2")
    )
    write(
        tmp_path,
        "deploy.yaml",
        f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: web, namespace: {namespace}}}
        spec:
          selector: {{matchLabels: {{app: web}}}}
          template:
            metadata: {{labels: {{app: web}}}}
            spec:
              containers:
              - name: web
                image: nginx:1.27
                resources: {{requests: {{cpu: "0.5", memory: 64Mi}}}}
                ports: [{{containerPort: 80}}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: web, namespace: {namespace}}}
        spec:
          selector: {{app: web}}
          ports: [{{port: 80, targetPort: 80}}]
        """,
    )

    first = await runtime.apply_directory(settings(kube, tmp_path))
    second = await runtime.apply_directory(settings(kube, tmp_path))

    assert first.ok, first
    assert set(actions(first).values()) == {"created"}
    assert set(actions(second).values()) == {"unchanged"}, actions(second)
    before = {e.ref: e.resource_version_after for e in first.applied.entries}
    after = {e.ref: e.resource_version_after for e in second.applied.entries}
    assert before == after
    stored = await client.CoreV1Api(kube.api).read_namespaced_config_map("a", namespace)
    assert stored.metadata.labels["app.kubernetes.io/managed-by"] == "aioreconcile"
    assert stored.metadata.labels["aioreconcile.dev/sync"] == "test-" + tmp_path.name
    assert stored.metadata.annotations["aioreconcile.dev/revision"] == first.revision


async def test_changed_content_is_configured_and_removed_label_is_removed(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    manifest = f"""\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: c
          namespace: {namespace}
          labels: {{team: a, tier: web}}
        data: {{k: "1"}}
        """
    write(tmp_path, "cm.yaml", manifest)
    await runtime.apply_directory(settings(kube, tmp_path))
    write(tmp_path, "cm.yaml", manifest.replace(", tier: web", "").replace('"1"', '"2"'))

    second = await runtime.apply_directory(settings(kube, tmp_path))

    assert actions(second) == {"ConfigMap/c": "configured"}
    stored = await client.CoreV1Api(kube.api).read_namespaced_config_map("c", namespace)
    assert stored.data == {"k": "2"}
    assert "tier" not in stored.metadata.labels
    assert stored.metadata.annotations["aioreconcile.dev/revision"] == second.revision


async def test_crd_and_its_custom_resources_in_one_directory(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    group = f"g{secrets.token_hex(3)}.example.dev"
    write(
        tmp_path,
        "crd.yaml",
        f"""\
        apiVersion: apiextensions.k8s.io/v1
        kind: CustomResourceDefinition
        metadata: {{name: gadgets.{group}}}
        spec:
          group: {group}
          scope: Namespaced
          names: {{plural: gadgets, singular: gadget, kind: Gadget}}
          versions:
          - name: v1
            served: true
            storage: true
            schema:
              openAPIV3Schema:
                type: object
                properties:
                  spec: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
        """,
    )
    # The custom resource names no namespace: the CRD in the same directory says it is namespaced.
    write(
        tmp_path,
        "gadget.yaml",
        f"""\
        apiVersion: {group}/v1
        kind: Gadget
        metadata: {{name: g1}}
        spec: {{size: 3}}
        """,
    )

    outcome = await runtime.apply_directory(
        settings(kube, tmp_path, render=RenderSpec(namespace=namespace))
    )

    assert outcome.ok, outcome
    assert actions(outcome) == {
        "CustomResourceDefinition/gadgets." + group: "created",
        "Gadget/g1": "created",
    }
    gadget = await client.CustomObjectsApi(kube.api).get_namespaced_custom_object(
        group, "v1", namespace, "gadgets", "g1"
    )
    assert gadget["spec"] == {"size": 3}


async def test_namespace_and_objects_inside_it(kube: Kube, tmp_path: Path) -> None:
    fresh = f"ns-{secrets.token_hex(3)}"
    write(tmp_path, "z-objects.yaml", config_map("inside", fresh, k="v"))
    write(
        tmp_path,
        "a-namespace.yaml",
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {fresh}}}\n",
    )

    outcome = await runtime.apply_directory(settings(kube, tmp_path))

    assert outcome.ok, outcome
    assert [e.ref.kind for e in outcome.applied.entries] == ["Namespace", "ConfigMap"]


async def test_rejected_object_is_reported_others_applied_and_prune_skipped(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    inventory = f"inv-{secrets.token_hex(3)}"
    write(tmp_path, "old.yaml", config_map("old", namespace, k="v"))
    first = await runtime.apply_directory(
        settings(kube, tmp_path, inventory=inventory, inventory_namespace=namespace, prune=True)
    )
    assert first.ok, first
    (tmp_path / "old.yaml").unlink()
    write(tmp_path, "good.yaml", config_map("good", namespace, k="v"))
    write(
        tmp_path,
        "bad.yaml",
        f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: bad, namespace: {namespace}}}
        spec: {{ports: [{{port: 99999}}]}}
        ---
        apiVersion: example.invalid/v1
        kind: Nonexistent
        metadata: {{name: ghost, namespace: {namespace}}}
        """,
    )

    outcome = await runtime.apply_directory(
        settings(kube, tmp_path, inventory=inventory, inventory_namespace=namespace, prune=True)
    )

    assert outcome.reason is Reason.APPLY_FAILED
    assert actions(outcome) == {
        "ConfigMap/good": "created",
        "Service/bad": "failed",
        "Nonexistent/ghost": "failed",
    }
    errors = {e.ref.name: e.error or "" for e in outcome.applied.failed}
    assert "99999" in errors["bad"]
    assert "Invalid" in errors["bad"]
    assert "Nonexistent" in errors["ghost"]
    assert "failed" in (outcome.prune_note or "")
    # Not pruned: still there.
    await client.CoreV1Api(kube.api).read_namespaced_config_map("old", namespace)


async def test_prune_deletes_what_left_the_source_but_keeps_opted_out_objects(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    inventory = f"inv-{secrets.token_hex(3)}"
    write(tmp_path, "keep.yaml", config_map("keep", namespace, k="v"))
    write(tmp_path, "drop.yaml", config_map("drop", namespace, k="v"))
    write(
        tmp_path,
        "sticky.yaml",
        f"""\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: sticky
          namespace: {namespace}
          annotations: {{aioreconcile.dev/prune: disabled}}
        """,
    )
    options = {"inventory": inventory, "inventory_namespace": namespace, "prune": True}
    await runtime.apply_directory(settings(kube, tmp_path, **options))
    (tmp_path / "drop.yaml").unlink()
    (tmp_path / "sticky.yaml").unlink()

    outcome = await runtime.apply_directory(settings(kube, tmp_path, **options))

    assert outcome.ok, outcome
    assert {e.ref.name: e.action for e in outcome.pruned.entries} == {
        "drop": Action.DELETED,
        "sticky": Action.SKIPPED,
    }
    names = {
        cm.metadata.name
        for cm in (await client.CoreV1Api(kube.api).list_namespaced_config_map(namespace)).items
    }
    assert {"keep", "sticky"} <= names
    assert "drop" not in names
    assert outcome.inventory_size == 1


async def test_empty_source_prunes_nothing_unless_allowed(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    inventory = f"inv-{secrets.token_hex(3)}"
    options = {"inventory": inventory, "inventory_namespace": namespace, "prune": True}
    write(tmp_path, "cm.yaml", config_map("only", namespace, k="v"))
    await runtime.apply_directory(settings(kube, tmp_path, **options))
    (tmp_path / "cm.yaml").unlink()

    refused = await runtime.apply_directory(settings(kube, tmp_path, **options))
    allowed = await runtime.apply_directory(settings(kube, tmp_path, allow_empty=True, **options))

    assert refused.pruned.entries == ()
    assert "declares no objects" in (refused.prune_note or "")
    assert [(e.ref.name, e.action) for e in allowed.pruned.entries] == [("only", Action.DELETED)]


async def test_broken_yaml_applies_nothing(kube: Kube, namespace: str, tmp_path: Path) -> None:
    write(tmp_path, "good.yaml", config_map("never", namespace, k="v"))
    write(tmp_path, "broken.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\n")

    outcome = await runtime.apply_directory(settings(kube, tmp_path))

    assert outcome.reason is Reason.RENDER_FAILED
    assert "broken.yaml" in outcome.message
    assert "line" in outcome.message
    assert outcome.changeset.entries == ()
    names = {
        cm.metadata.name
        for cm in (await client.CoreV1Api(kube.api).list_namespaced_config_map(namespace)).items
    }
    assert "never" not in names


async def test_field_changed_by_another_manager_is_taken_back(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    write(tmp_path, "cm.yaml", config_map("owned", namespace, k="git"))
    await runtime.apply_directory(settings(kube, tmp_path))
    core = client.CoreV1Api(kube.api)
    await core.patch_namespaced_config_map(
        "owned", namespace, {"data": {"k": "edited"}}, field_manager="kubectl-edit"
    )

    outcome = await runtime.apply_directory(settings(kube, tmp_path))

    assert actions(outcome) == {"ConfigMap/owned": "configured"}
    assert (await core.read_namespaced_config_map("owned", namespace)).data == {"k": "git"}


def _cli(kube: Kube, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioreconcile", *args, "--kubeconfig", str(kube.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_apply_json_and_diff_exit_codes_with_masked_secret(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    write(
        tmp_path,
        "secret.yaml",
        f"""\
        apiVersion: v1
        kind: Secret
        metadata: {{name: creds, namespace: {namespace}}}
        stringData: {{password: hunter2-original}}
        """,
    )
    applied = _cli(kube, "apply", str(tmp_path), "-o", "json")
    assert applied.returncode == 0, applied.stderr
    (entry,) = orjson.loads(applied.stdout)["entries"]
    assert {k: entry[k] for k in ("kind", "namespace", "name", "action")} == {
        "kind": "Secret",
        "namespace": namespace,
        "name": "creds",
        "action": "created",
    }

    same = _cli(kube, "diff", str(tmp_path))
    write(
        tmp_path,
        "secret.yaml",
        (tmp_path / "secret.yaml").read_text().replace("original", "rotated"),
    )
    changed = _cli(kube, "diff", str(tmp_path))

    assert same.returncode == 0, same.stdout + same.stderr
    assert changed.returncode == 1, changed.stderr
    assert "password" in changed.stdout
    for output in (applied, same, changed):
        assert "hunter2" not in output.stdout + output.stderr
        assert "aHVudGVyMi" not in output.stdout + output.stderr  # base64 of the value


async def test_wait_reports_objects_that_do_not_become_ready(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    # No controller-manager runs here, so a Deployment is never observed: it stays InProgress.
    write(tmp_path, "cm.yaml", config_map("ready", namespace, k="v"))
    write(
        tmp_path,
        "deploy.yaml",
        f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: stuck, namespace: {namespace}}}
        spec:
          selector: {{matchLabels: {{app: stuck}}}}
          template:
            metadata: {{labels: {{app: stuck}}}}
            spec: {{containers: [{{name: c, image: busybox}}]}}
        """,
    )

    outcome = await runtime.apply_directory(settings(kube, tmp_path, wait=True, wait_timeout_s=1.0))

    assert outcome.reason is Reason.HEALTH_CHECK_FAILED
    ((ref, health),) = outcome.not_ready
    assert (ref.kind, ref.name) == ("Deployment", "stuck")
    assert health.status == "InProgress"
    assert health.message


async def test_wait_succeeds_when_everything_is_current(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    write(tmp_path, "cm.yaml", config_map("fine", namespace, k="v"))

    outcome = await runtime.apply_directory(settings(kube, tmp_path, wait=True, wait_timeout_s=5.0))

    assert outcome.ok, outcome
    assert outcome.not_ready == ()


async def _config_map_applies(kube: Kube) -> dict[str, float]:
    """The apiserver's own count of server-side applies to ConfigMaps, by dry_run label
    (``apiserver_request_total``, verb APPLY): what the engine sent, as the server saw it."""
    response = await kube.api.call_api(
        "/metrics", "GET", _preload_content=False, auth_settings=["BearerToken"]
    )
    text = (await response.read()).decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if (
            line.startswith("apiserver_request_total{")
            and 'verb="APPLY"' in line
            and 'resource="configmaps"' in line
        ):
            dry_run = line.partition('dry_run="')[2].partition('"')[0] or "none"
            counts[dry_run] = counts.get(dry_run, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


async def test_a_changed_config_map_is_applied_in_one_request_and_the_others_keep_theirs(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    write(
        tmp_path,
        "cms.yaml",
        config_map("same", namespace, k="1") + config_map("changed", namespace, k="old"),
    )
    first = await runtime.apply_directory(settings(kube, tmp_path))
    write(
        tmp_path,
        "cms.yaml",
        config_map("same", namespace, k="1") + config_map("changed", namespace, k="new"),
    )
    before = await _config_map_applies(kube)

    second = await runtime.apply_directory(settings(kube, tmp_path))

    after = await _config_map_applies(kube)
    assert actions(second) == {"ConfigMap/same": "unchanged", "ConfigMap/changed": "configured"}
    sent = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    assert sent.get("All", 0.0) == 0, sent  # no dry-run: the difference was certain
    assert sent.get("none", 0.0) == 1, sent  # one apply, of the changed object only
    versions = {e.ref.name: e.resource_version_after for e in first.applied.entries}
    unchanged = next(e for e in second.applied.entries if e.ref.name == "same")
    assert unchanged.resource_version_after == versions["same"]
    stored = await client.CoreV1Api(kube.api).read_namespaced_config_map("changed", namespace)
    assert stored.data == {"k": "new"}


async def test_each_response_is_handed_over_as_it_arrives_and_only_what_is_kept_stays(
    kube: Kube, namespace: str
) -> None:
    """``ApplyOptions.on_live``: the controller keeps a stored form per object, not 10,000
    responses until the apply ends; a new Namespace still settles (whole) before its objects."""
    fresh = f"{namespace}-kept"
    bodies: list[JsonObject] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": fresh}}
    ]
    bodies += [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"c{i}", "namespace": fresh},
            "data": {"k": str(i)},
        }
        for i in range(3)
    ]
    seen: list[tuple[str, str]] = []

    def on_entry(entry: ChangeSetEntry) -> None:
        seen.append(("entry", entry.ref.name))

    def on_live(entry: ChangeSetEntry, obj: JsonObject) -> JsonObject | None:
        seen.append(("live", entry.ref.name))
        assert obj["metadata"]["managedFields"]  # the whole response
        if obj["kind"] == "Namespace":
            return None
        return {"resourceVersion": obj["metadata"]["resourceVersion"]}

    options = ApplyOptions(
        sync="kept", revision="r1", concurrency=1, on_entry=on_entry, on_live=on_live
    )
    try:
        async with await KubeCluster.connect(kube.kubeconfig) as cluster:
            await cluster.refresh_discovery()
            result = await cluster.apply(
                [Manifest(ObjectRef.of(b), b, origin="t") for b in bodies], options
            )
    finally:
        await client.CoreV1Api(kube.api).delete_namespace(fresh)

    assert [e.action for e in result.changeset.entries] == [Action.CREATED] * 4
    # One object at a time (concurrency 1): each response went to on_live right after its entry.
    assert seen == [(kind, n) for n in [fresh, "c0", "c1", "c2"] for kind in ("entry", "live")]
    assert {ref.name: obj for ref, obj in result.live.items()} == {
        e.ref.name: {"resourceVersion": e.resource_version_after}
        for e in result.changeset.entries[1:]
    }


async def test_an_apply_runs_as_many_tasks_as_its_concurrency_not_one_per_object(
    kube: Kube, namespace: str
) -> None:
    """A task per object waiting for its turn was ~59 MiB of a 10,000-object apply's peak."""
    bodies: list[JsonObject] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"c{i}", "namespace": namespace},
            "data": {"k": str(i)},
        }
        for i in range(40)
    ]
    running: list[int] = []
    options = ApplyOptions(
        sync="tasks",
        revision="r1",
        concurrency=4,
        on_entry=lambda _: running.append(len(anyio.get_running_tasks())),
    )
    async with await KubeCluster.connect(kube.kubeconfig) as cluster:
        await cluster.refresh_discovery()
        before = len(anyio.get_running_tasks())
        result = await cluster.apply(
            [Manifest(ObjectRef.of(b), b, origin="t") for b in bodies], options
        )

    assert [e.action for e in result.changeset.entries] == [Action.CREATED] * 40
    assert len(running) == 40
    # 4 workers, and a few short tasks of aiohttp's own (closing connections): not 40.
    assert max(running) <= before + 4 + 4, running
