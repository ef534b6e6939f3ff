"""Prune against the real apiserver when the world moves under it: an object recreated between
our read and our DELETE, a deleted inventory, a hand-edited one."""

import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client

from aioreconcile import runtime
from aioreconcile.adapters.kube.applying import Applier
from aioreconcile.adapters.kube.cluster import KubeCluster
from aioreconcile.adapters.kube.discovery import Discovery
from aioreconcile.adapters.kube.inventories import ConfigMapInventoryStore
from aioreconcile.adapters.kube.transport import KubeTransport
from aioreconcile.adapters.render import render
from aioreconcile.engine.applying import ApplyOptions
from aioreconcile.engine.changeset import Action
from aioreconcile.engine.config import ServiceAccountRef
from aioreconcile.engine.model import JsonObject, ObjectRef
from aioreconcile.engine.naming import MANAGED_BY_LABEL, MANAGED_BY_VALUE, SYNC_LABEL
from aioreconcile.engine.outcomes import Reason
from aioreconcile.engine.sources import RenderSpec
from aioreconcile.reactor.syncing import SyncRequest, sync_once
from aioreconcile.testing.pytest_plugin import Kube
from tests.integration.test_impersonation import grant_config_maps

pytestmark = pytest.mark.integration


@pytest.fixture
async def transport(kube: Kube) -> AsyncIterator[KubeTransport]:
    async with await KubeTransport.connect(kube.kubeconfig) as opened:
        yield opened


def labelled_config_map(name: str, namespace: str, sync: str, value: str) -> JsonObject:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, SYNC_LABEL: sync},
        },
        "data": {"v": value},
    }


class RecreatingApplier(Applier):
    """An applier whose read of ``target`` is followed, before anything else happens, by
    someone deleting that object and creating a new one under the same name (and with our
    labels: the worst case, which the label checks cannot tell apart)."""

    def __init__(self, transport: KubeTransport, *, target: ObjectRef, sync: str) -> None:
        super().__init__(transport, Discovery(transport))
        self.target = target
        self.sync = sync
        self.recreated_uid = ""

    async def get(self, ref: ObjectRef) -> JsonObject | None:
        live = await super().get(ref)
        if ref == self.target and not self.recreated_uid:
            base = f"/api/v1/namespaces/{ref.namespace}/configmaps"
            await self._transport.request("DELETE", f"{base}/{ref.name}")
            created = await self._transport.request(
                "POST", base, body=labelled_config_map(ref.name, ref.namespace, self.sync, "new")
            )
            self.recreated_uid = created.body["metadata"]["uid"]
        return live


async def test_prune_never_deletes_an_object_recreated_after_it_was_read(
    transport: KubeTransport, namespace: str
) -> None:
    sync = f"uid-{secrets.token_hex(3)}"
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    first = await transport.request(
        "POST", base, body=labelled_config_map("stale", namespace, sync, "old")
    )
    ref = ObjectRef("", "ConfigMap", namespace, "stale", "v1")
    applier = RecreatingApplier(transport, target=ref, sync=sync)

    pruned = await applier.delete([ref], ApplyOptions(sync=sync, revision="r2"))

    still = (await transport.request("GET", f"{base}/stale")).body
    assert still["metadata"]["uid"] == applier.recreated_uid != first.body["metadata"]["uid"]
    assert still["data"] == {"v": "new"}
    [entry] = pruned.entries
    assert entry.action is Action.SKIPPED
    assert "recreated" in (entry.error or ""), entry.error


async def test_prune_deletes_the_object_it_read(transport: KubeTransport, namespace: str) -> None:
    sync = f"uid-{secrets.token_hex(3)}"
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    await transport.request("POST", base, body=labelled_config_map("stale", namespace, sync, "v"))
    ref = ObjectRef("", "ConfigMap", namespace, "stale", "v1")

    pruned = await Applier(transport, Discovery(transport)).delete(
        [ref], ApplyOptions(sync=sync, revision="r2")
    )

    assert [(e.ref.name, e.action) for e in pruned.entries] == [("stale", Action.DELETED)]
    listed = await transport.request("GET", base)
    assert "stale" not in {item["metadata"]["name"] for item in listed.body["items"]}


async def test_a_dry_run_prune_reports_the_delete_and_deletes_nothing(
    transport: KubeTransport, namespace: str
) -> None:
    sync = f"uid-{secrets.token_hex(3)}"
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    await transport.request("POST", base, body=labelled_config_map("stale", namespace, sync, "v"))
    ref = ObjectRef("", "ConfigMap", namespace, "stale", "v1")

    pruned = await Applier(transport, Discovery(transport)).delete(
        [ref], ApplyOptions(sync=sync, revision="r2", dry_run=True)
    )

    assert [(e.ref.name, e.action) for e in pruned.entries] == [("stale", Action.DELETED)]
    assert (await transport.request("GET", f"{base}/stale")).body["data"] == {"v": "v"}


# --- the inventory ConfigMap deleted or hand-edited ----------------------------------------------


def write_config_map(directory: Path, name: str, namespace: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
    }
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(body))


def pruning(kube: Kube, path: Path, namespace: str, inventory: str) -> runtime.DirectorySettings:
    return runtime.DirectorySettings(
        path=path,
        sync=inventory,
        cluster=runtime.ClusterSettings(kubeconfig=kube.kubeconfig),
        inventory=inventory,
        inventory_namespace=namespace,
        prune=True,
    )


async def config_map_names(kube: Kube, namespace: str) -> set[str]:
    listed = await client.CoreV1Api(kube.api).list_namespaced_config_map(namespace)
    return {cm.metadata.name for cm in listed.items}


async def test_deleted_inventory_is_rebuilt_from_labels_and_prune_still_removes_what_left(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    inventory = f"inv-{secrets.token_hex(3)}"
    for name in ("keep", "drop"):
        write_config_map(tmp_path, name, namespace)
    first = await runtime.apply_directory(pruning(kube, tmp_path, namespace, inventory))
    assert first.ok, first
    await client.CoreV1Api(kube.api).delete_namespaced_config_map(inventory, namespace)
    (tmp_path / "drop.yaml").unlink()

    outcome = await runtime.apply_directory(pruning(kube, tmp_path, namespace, inventory))

    assert outcome.ok, outcome
    assert [(e.ref.name, e.action) for e in outcome.pruned.entries] == [("drop", Action.DELETED)]
    assert await config_map_names(kube, namespace) == {"keep", inventory}
    assert outcome.inventory_size == 1


async def test_a_rebuild_never_prunes_objects_of_another_inventory_with_the_same_sync_name(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """Two controllers (or two ``apply --prune`` users) that both named their sync ``app`` but
    keep their inventories apart: the second one's first run (no inventory yet) lists ``app``'s
    objects cluster-wide and must take none of the first one's as its own."""
    sync = f"app-{secrets.token_hex(3)}"
    core = client.CoreV1Api(kube.api)
    other = f"t-{secrets.token_hex(4)}"
    await core.create_namespace({"metadata": {"name": other}})
    try:
        theirs, ours = tmp_path / "theirs", tmp_path / "ours"
        theirs.mkdir()
        ours.mkdir()
        for name in ("a", "b", "c"):
            write_config_map(theirs, name, other)
        write_config_map(ours, "mine", namespace)
        first = await runtime.apply_directory(
            replace(pruning(kube, theirs, other, "inventory"), sync=sync)
        )
        assert first.ok, first

        outcome = await runtime.apply_directory(
            replace(pruning(kube, ours, namespace, "inventory"), sync=sync)
        )

        assert outcome.ok, outcome
        assert outcome.pruned.entries == ()
        assert await config_map_names(kube, other) >= {"a", "b", "c", "inventory"}
        assert outcome.inventory_size == 1
    finally:
        await core.delete_namespace(other)


async def test_a_rebuild_leaves_objects_that_name_no_inventory(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """An object with our labels but no inventory annotation (applied by an older version, or
    labelled by hand) cannot be proven ours: a rebuild does not prune it."""
    inventory = f"inv-{secrets.token_hex(3)}"
    write_config_map(tmp_path, "keep", namespace)
    await client.CoreV1Api(kube.api).create_namespaced_config_map(
        namespace, labelled_config_map("unproven", namespace, inventory, "v")
    )

    outcome = await runtime.apply_directory(pruning(kube, tmp_path, namespace, inventory))

    assert outcome.ok, outcome
    assert outcome.pruned.entries == ()
    assert await config_map_names(kube, namespace) == {"keep", "unproven", inventory}


CORRUPTIONS = [
    pytest.param("not json at all", "data.entries.json is not JSON", id="not-json"),
    pytest.param('{"id": "x"}', "data.entries.json: inventory is not a list", id="not-a-list"),
    pytest.param(
        '[{"id": "ns_a__ConfigMap"}]', "entry 0 ('ns_a__ConfigMap') has no version", id="no-version"
    ),
    pytest.param(
        '[{"id": "nonsense", "v": "v1"}]', "'nonsense' is not <namespace>_<name>", id="bad-id"
    ),
    pytest.param(None, "data.entries.json is missing", id="key-removed"),
]


@pytest.mark.parametrize(("entries", "problem"), CORRUPTIONS)
async def test_corrupt_inventory_fails_with_the_problem_named_and_prunes_nothing(
    kube: Kube, namespace: str, tmp_path: Path, entries: str | None, problem: str
) -> None:
    inventory = f"inv-{secrets.token_hex(3)}"
    for name in ("keep", "drop"):
        write_config_map(tmp_path, name, namespace)
    assert (await runtime.apply_directory(pruning(kube, tmp_path, namespace, inventory))).ok
    core = client.CoreV1Api(kube.api)
    stored = await core.read_namespaced_config_map(inventory, namespace)
    data: dict[str, Any] = dict(stored.data)
    if entries is None:
        del data["entries.json"]
    else:
        data["entries.json"] = entries
    stored.data = data
    await core.replace_namespaced_config_map(inventory, namespace, stored)
    (tmp_path / "drop.yaml").unlink()

    outcome = await runtime.apply_directory(pruning(kube, tmp_path, namespace, inventory))

    assert outcome.reason is Reason.INVENTORY_FAILED
    assert f"ConfigMap/{namespace}/{inventory}" in outcome.message
    assert problem in outcome.message, outcome.message
    assert outcome.pruned.entries == ()
    assert "drop" in await config_map_names(kube, namespace)
    # Left as the human wrote it: overwriting it would forget what it listed.
    kept = await core.read_namespaced_config_map(inventory, namespace)
    assert kept.data == data


async def test_the_search_by_labels_covers_every_deletable_kind_once_in_its_preferred_version(
    transport: KubeTransport,
) -> None:
    cluster = KubeCluster(transport)
    await cluster.refresh_discovery()

    kinds = await cluster.deletable_kinds()

    versions = {(k.group, k.kind): k.version for k in kinds}
    assert len(versions) == len(kinds)
    assert versions[("", "ConfigMap")] == "v1"
    assert versions[("apps", "Deployment")] == "v1"
    assert versions[("autoscaling", "HorizontalPodAutoscaler")] == "v2"  # served as v1 too
    assert ("authentication.k8s.io", "TokenReview") not in versions  # create only
    assert ("", "ComponentStatus") not in versions  # cannot be deleted


async def test_a_namespaced_service_account_rebuilds_a_deleted_inventory_in_its_namespaces(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    await grant_config_maps(kube, namespace, "deployer")  # ConfigMaps in this namespace only
    inventory = f"inv-{secrets.token_hex(3)}"
    for name in ("keep", "drop"):
        write_config_map(tmp_path, name, namespace)
    options = ApplyOptions(sync=inventory, revision="r1")
    request = SyncRequest(directory=tmp_path, render=RenderSpec(), options=options, prune=True)
    async with await KubeCluster.connect(kube.kubeconfig) as admin:
        await admin.refresh_discovery()
        tenant = admin.impersonating(ServiceAccountRef(namespace, "deployer"))
        store = ConfigMapInventoryStore(admin.transport, namespace=namespace, name=inventory)
        first = await sync_once(request, cluster=tenant, render=render, inventory=store)
        assert first.ok, first
        await client.CoreV1Api(kube.api).delete_namespaced_config_map(inventory, namespace)
        (tmp_path / "drop.yaml").unlink()

        second = await sync_once(
            replace(request, options=replace(options, revision="r2")),
            cluster=tenant,
            render=render,
            inventory=store,
        )

    assert second.ok, second
    assert [(e.ref.name, e.action) for e in second.pruned.entries] == [("drop", Action.DELETED)]
    assert await config_map_names(kube, namespace) == {"keep", inventory}
