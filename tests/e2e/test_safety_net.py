"""What the watches miss, the next poll finds: the controller against the real apiserver and a
real git daemon, with a hook between the watches and the controller that drops the events of
chosen objects (a missed event, as a stalled watch or a lost relist would cause). Also the
inventory ConfigMap deleted or hand-edited under a running controller."""

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from kubernetes_asyncio import client

from aioreconcile.adapters.git import GitCache
from aioreconcile.adapters.kube.cluster import KubeCluster, ManagedKindsWatcher
from aioreconcile.adapters.kube.inventories import ConfigMapInventoryStore
from aioreconcile.adapters.kube.watching import WatchManager
from aioreconcile.adapters.render import render
from aioreconcile.engine.config import GitSourceSpec, SyncSpec
from aioreconcile.engine.events import WatchEvent
from aioreconcile.engine.metrics import Registry
from aioreconcile.reactor.controlling import Controller, SyncState
from aioreconcile.testing.pytest_plugin import Kube
from tests.git.conftest import Upstream

pytestmark = pytest.mark.integration

INTERVAL_S = 1.0
HEAL_WITHIN_S = INTERVAL_S * 1.1 + 20  # the next poll, then room for a loaded 2-core machine


def config_map(name: str, namespace: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


def files(*docs: dict[str, Any]) -> dict[str, str]:
    return {f"deploy/{doc['metadata']['name']}.yaml": yaml.safe_dump(doc) for doc in docs}


@dataclass
class Running:
    controller: Controller
    state: SyncState
    namespace: str
    core: Any
    dropped: list[WatchEvent] = field(default_factory=list)

    async def wait_for(self, check: Callable[[], Any], *, seconds: float = 30) -> None:
        with anyio.fail_after(seconds):
            while not await check():
                await anyio.sleep(0.05)

    async def applied(self, sha: str) -> bool:
        return self.state.last_applied_revision == sha

    async def data(self, name: str) -> dict[str, str] | None:
        try:
            cm = await self.core.read_namespaced_config_map(name, self.namespace)
        except client.exceptions.ApiException:
            return None
        return dict(cm.data or {})

    @property
    def inventory_key(self) -> str:
        return f"{self.namespace}/inventory-{self.state.spec.name}"

    async def inventory_annotation(self, name: str) -> str | None:
        cm = await self.core.read_namespaced_config_map(name, self.namespace)
        value: str | None = (cm.metadata.annotations or {}).get("aioreconcile.dev/inventory")
        return value

    async def names(self) -> set[str]:
        listed = await self.core.list_namespaced_config_map(self.namespace)
        return {cm.metadata.name for cm in listed.items}


@asynccontextmanager
async def controller(
    kube: Kube,
    namespace: str,
    repo: Upstream,
    daemon: str,
    tmp_path: Path,
    *,
    deaf_to: frozenset[str] = frozenset(),
    interval_s: float = INTERVAL_S,
) -> AsyncIterator[Running]:
    """The controller as ``run`` wires it (watches, pollers every second, a ConfigMap
    inventory), except that watch events of objects named in ``deaf_to`` never reach it."""
    spec = SyncSpec(
        name=f"net-{secrets.token_hex(3)}",
        source=GitSourceSpec(
            url=f"{daemon}{repo.name}.git", ref="main", path="deploy", interval_s=interval_s
        ),
        target_namespace=namespace,
    )
    running: list[Running] = []

    def on_event(event: WatchEvent) -> None:
        if event.ref.namespace == namespace and event.ref.name in deaf_to:
            running[0].dropped.append(event)
            return
        running[0].controller.on_watch_event(event)

    async with await KubeCluster.connect(kube.kubeconfig) as cluster:
        await cluster.refresh_discovery()
        manager = WatchManager(cluster.transport, cluster.discovery, on_event=on_event)
        made = Controller(
            [spec],
            cluster=cluster,
            render=render,
            sources={spec.name: GitCache(tmp_path / "git-cache").source(spec.source)},
            inventories={
                spec.name: ConfigMapInventoryStore(
                    cluster.transport, namespace=namespace, name=f"inventory-{spec.name}"
                )
            },
            watcher=ManagedKindsWatcher(manager, cluster.discovery),
            registry=Registry(),
        )
        running.append(Running(made, made.states[spec.name], namespace, client.CoreV1Api(kube.api)))
        async with anyio.create_task_group() as tasks:
            await tasks.start(manager.run)
            await tasks.start(made.run)
            try:
                yield running[0]
            finally:
                tasks.cancel_scope.cancel()


async def test_an_edit_the_watch_never_reported_is_healed_by_the_next_poll(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    repo = upstream("missed-edit")
    sha = repo.commit(files(config_map("settings", namespace, v="git")))
    async with controller(
        kube, namespace, repo, git_daemon, tmp_path, deaf_to=frozenset({"settings"})
    ) as running:
        await running.wait_for(lambda: running.applied(sha))
        await running.core.patch_namespaced_config_map(
            "settings", namespace, {"data": {"v": "edited"}}, field_manager="intruder"
        )

        async def restored() -> bool:
            return await running.data("settings") == {"v": "git"}

        await running.wait_for(restored, seconds=HEAL_WITHIN_S)

        assert running.dropped, "the hook should have kept the edit from the controller"
        assert running.state.heals >= 1
        # The heal writes the reconcile's stamp, the inventory annotation included.
        assert await running.inventory_annotation("settings") == running.inventory_key


async def test_a_stripped_inventory_annotation_is_healed_by_the_next_poll(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    """Without it a rebuild of a lost inventory would leave the object behind: it is ours, so
    its removal is drift like a stripped label."""
    repo = upstream("stripped-annotation")
    sha = repo.commit(files(config_map("settings", namespace, v="git")))
    async with controller(
        kube, namespace, repo, git_daemon, tmp_path, deaf_to=frozenset({"settings"})
    ) as running:
        await running.wait_for(lambda: running.applied(sha))
        assert await running.inventory_annotation("settings") == running.inventory_key
        await running.core.patch_namespaced_config_map(
            "settings",
            namespace,
            {"metadata": {"annotations": {"aioreconcile.dev/inventory": None}}},
            field_manager="intruder",
        )

        async def restored() -> bool:
            return await running.inventory_annotation("settings") == running.inventory_key

        await running.wait_for(restored, seconds=HEAL_WITHIN_S)
        assert running.state.heals >= 1


async def test_a_deletion_or_a_stripped_label_the_watch_never_reported_is_healed_by_the_next_poll(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    repo = upstream("missed-delete")
    sha = repo.commit(
        files(config_map("gone", namespace, v="git"), config_map("unlabelled", namespace, v="git"))
    )
    deaf_to = frozenset({"gone", "unlabelled"})
    async with controller(kube, namespace, repo, git_daemon, tmp_path, deaf_to=deaf_to) as running:
        await running.wait_for(lambda: running.applied(sha))
        await running.core.delete_namespaced_config_map("gone", namespace)
        # Without our labels the object leaves every labelled watch and listing.
        await running.core.patch_namespaced_config_map(
            "unlabelled",
            namespace,
            {
                "metadata": {
                    "labels": {"app.kubernetes.io/managed-by": None, "aioreconcile.dev/sync": None}
                },
                "data": {"v": "edited"},
            },
        )

        async def healed() -> bool:
            unlabelled = await running.core.read_namespaced_config_map("unlabelled", namespace)
            return (
                await running.data("gone") == {"v": "git"}
                and unlabelled.data == {"v": "git"}
                and (unlabelled.metadata.labels or {}).get("aioreconcile.dev/sync")
                == (running.state.spec.name)
            )

        await running.wait_for(healed, seconds=HEAL_WITHIN_S)

        assert {e.ref.name for e in running.dropped} == deaf_to


async def test_deleted_inventory_does_not_orphan_what_later_leaves_git(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    repo = upstream("lost-inventory")
    first = repo.commit(
        files(config_map("keep", namespace, v="1"), config_map("drop", namespace, v="1"))
    )
    async with controller(kube, namespace, repo, git_daemon, tmp_path) as running:
        await running.wait_for(lambda: running.applied(first))
        inventory = f"inventory-{running.state.spec.name}"
        assert inventory in await running.names()
        await running.core.delete_namespaced_config_map(inventory, namespace)
        (repo.work / "deploy" / "drop.yaml").unlink()
        second = repo.commit({}, "drop leaves Git")

        await running.wait_for(lambda: running.applied(second))

        assert await running.names() == {"keep", inventory}
        assert running.state.inventory_size == 1


async def test_hand_edited_inventory_stops_the_sync_with_the_problem_named_not_a_retry_loop(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    repo = upstream("corrupt-inventory")
    first = repo.commit(
        files(config_map("keep", namespace, v="1"), config_map("drop", namespace, v="1"))
    )
    # Polls only when the test says: every reconcile below is one we caused or a retry.
    async with controller(kube, namespace, repo, git_daemon, tmp_path, interval_s=3600) as running:
        await running.wait_for(lambda: running.applied(first))
        inventory = f"inventory-{running.state.spec.name}"
        await running.core.patch_namespaced_config_map(
            inventory, namespace, {"data": {"entries.json": '[{"id": "x_y__ConfigMap"}]'}}
        )
        (repo.work / "deploy" / "drop.yaml").unlink()
        second = repo.commit({}, "drop leaves Git")
        running.controller.poll(running.state.spec.name)

        async def failed() -> bool:
            return running.state.reason == "InventoryFailed"

        await running.wait_for(failed)
        reconciles = running.state.reconciles
        await anyio.sleep(3)

        assert running.state.reconciles == reconciles  # no retry loop: the next poll will tell
        assert running.state.last_attempted_revision == second
        assert running.state.last_applied_revision == first
        message = running.state.message
        assert f"ConfigMap/{namespace}/{inventory}" in message
        assert "data.entries.json: inventory entry 0 ('x_y__ConfigMap') has no version" in message
        assert "delete the ConfigMap to rebuild it" in message
        assert "drop" in await running.names()  # nothing pruned on a list nobody can read
