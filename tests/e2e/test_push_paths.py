"""A push to a repository of several syncs: one fetch, and only the syncs it changed apply.

`aioreconcile run` in-process against the real apiserver and a real ``git daemon``; git
commands are counted through the adapter's spawn hook (the processes are real git).
"""

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio import watch as watching

from aioreconcile import runtime
from aioreconcile.adapters.git import running as git_running
from aioreconcile.testing.pytest_plugin import Kube
from tests.e2e.test_controller import Running, config_map, deployment, secret_env
from tests.git.conftest import Upstream

pytestmark = pytest.mark.integration
__all__ = ["secret_env"]

SYNCS = ("a", "b", "c")


def files(namespace: str, *, a: str = "1", b: str = "1", base: str = "1") -> dict[str, str]:
    """Syncs a and b: plain directories; c: a kustomize overlay of ``base/`` (outside it)."""
    return {
        "apps/a/cm.yaml": yaml.safe_dump(config_map("a", namespace, v=a)),
        "apps/b/cm.yaml": yaml.safe_dump(config_map("b", namespace, v=b)),
        "apps/c/kustomization.yaml": "resources:\n  - ../../base\n",
        "base/kustomization.yaml": "resources:\n  - cm.yaml\n",
        "base/cm.yaml": yaml.safe_dump(config_map("c", namespace, v=base)),
    }


@pytest.fixture
def fetches() -> Iterator[list[tuple[str, ...]]]:
    """The argv of every ``git fetch`` the controller starts."""
    seen: list[tuple[str, ...]] = []

    def record(argv: Any) -> None:
        if "fetch" in argv:
            seen.append(tuple(argv))

    git_running.spawn_hooks.append(record)
    try:
        yield seen
    finally:
        git_running.spawn_hooks.remove(record)


@asynccontextmanager
async def controller(
    kube: Kube,
    namespace: str,
    repo: Upstream,
    daemon: str,
    tmp_path: Path,
    syncs: dict[str, dict[str, Any]],
) -> AsyncIterator[Running]:
    url = f"{daemon}{repo.name}.git"
    config = {
        "syncs": [
            {
                "name": name,
                "source": {"url": url, "ref": "main", "path": spec["path"], "interval": "1h"},
                "targetNamespace": namespace,
                **{k: v for k, v in spec.items() if k != "path"},
            }
            for name, spec in syncs.items()
        ],
        "receivers": [
            {
                "name": "github",
                "provider": "github",
                "secretEnv": "TEST_WEBHOOK_SECRET",
                "syncs": list(syncs),
            }
        ],
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
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
        running = Running(
            ports.webhooks,
            ports.ops,
            repo,
            url,
            namespace,
            client.CoreV1Api(kube.api),
            client.AppsV1Api(kube.api),
        )
        try:
            yield running
        finally:
            tasks.cancel_scope.cancel()


def three_syncs() -> dict[str, dict[str, Any]]:
    return {
        "a": {"path": "apps/a"},
        "b": {"path": "apps/b"},
        "c": {"path": "apps/c", "render": {"type": "kustomize"}},
    }


async def all_applied(running: Running, sha: str, names: tuple[str, ...] = SYNCS) -> bool:
    syncs = {s["name"]: s for s in (await running.status())["syncs"]}
    return all(syncs[name]["lastAppliedRevision"] == sha for name in names)


async def versions(running: Running) -> dict[str, str]:
    found = {}
    for name in SYNCS:
        cm = await running.core.read_namespaced_config_map(name, running.namespace)
        found[name] = cm.metadata.resource_version
    return found


async def test_a_push_changing_one_path_fetches_once_and_applies_only_that_sync(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
    fetches: list[tuple[str, ...]],
) -> None:
    repo = upstream("three-syncs")
    first = repo.commit(files(namespace))
    async with controller(kube, namespace, repo, git_daemon, tmp_path, three_syncs()) as running:
        await running.wait_for(lambda: all_applied(running, first))
        before = await versions(running)
        fetches.clear()

        second = repo.commit(files(namespace, a="2"))
        response = await running.push_webhook(second, before=first)
        assert response.status == 202
        await running.wait_for(lambda: all_applied(running, second))

        assert len(fetches) == 1, fetches
        after = await versions(running)
        assert after["a"] != before["a"]
        assert {k: after[k] for k in "bc"} == {k: before[k] for k in "bc"}
        syncs = {s["name"]: s for s in (await running.status())["syncs"]}
        assert syncs["b"]["message"].startswith("unchanged: no file under apps/b changed")
        assert syncs["c"]["message"].startswith("unchanged: no file under apps/c changed")
        assert syncs["a"]["message"] == f"applied revision {second}"
        inventory = await running.core.read_namespaced_config_map(
            "aioreconcile-inventory-b", namespace
        )
        assert inventory.data["revision"] == second
        b = await running.core.read_namespaced_config_map("b", namespace)
        assert b.metadata.annotations["aioreconcile.dev/revision"] == first  # as rendered

        # Drift of an unchanged sync's object is still judged and healed, as of ``first``.
        await running.core.patch_namespaced_config_map("b", namespace, {"data": {"v": "edited"}})

        async def healed() -> bool:
            cm = await running.core.read_namespaced_config_map("b", namespace)
            return bool(cm.data == {"v": "1"})

        await running.wait_for(healed)
        b = await running.core.read_namespaced_config_map("b", namespace)
        assert b.metadata.annotations["aioreconcile.dev/revision"] == first
        assert (await running.sync_state("b"))["driftHeals"] == 1


async def test_a_change_to_a_kustomize_base_outside_the_path_reapplies_that_sync(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    repo = upstream("kustomize-base")
    first = repo.commit(files(namespace))
    async with controller(kube, namespace, repo, git_daemon, tmp_path, three_syncs()) as running:
        await running.wait_for(lambda: all_applied(running, first))
        before = await versions(running)

        second = repo.commit(files(namespace, base="2"))
        await running.push_webhook(second, before=first)
        await running.wait_for(lambda: all_applied(running, second))

        after = await versions(running)
        c = await running.core.read_namespaced_config_map("c", namespace)
        assert c.data == {"v": "2"}
        assert after["c"] != before["c"]
        assert {k: after[k] for k in "ab"} == {k: before[k] for k in "ab"}


async def test_a_sync_whose_last_reconcile_failed_is_applied_again_on_a_push_elsewhere(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    """b waits for a Deployment that never becomes ready (no controllers run here): its health
    check fails and is not retried by backoff. A push changing only a must still apply and
    judge b again, never record it as applied because its files did not change."""
    repo = upstream("failed-sync")
    content = files(namespace)
    content["apps/b/deploy.yaml"] = yaml.safe_dump(deployment("web", namespace))
    first = repo.commit(content)
    syncs = three_syncs()
    syncs["b"] |= {"wait": True, "timeout": "1s"}
    async with controller(kube, namespace, repo, git_daemon, tmp_path, syncs) as running:
        await running.wait_for(lambda: all_applied(running, first, ("a", "c")))

        async def b_failed(sha: str) -> bool:
            b = await running.sync_state("b")
            return bool(b["lastAttemptedRevision"] == sha and b["reason"] == "HealthCheckFailed")

        await running.wait_for(lambda: b_failed(first))
        second = repo.commit({**content, **files(namespace, a="2")})
        await running.push_webhook(second, before=first)
        await running.wait_for(lambda: all_applied(running, second, ("a", "c")))
        await running.wait_for(lambda: b_failed(second))
        b = await running.sync_state("b")
        assert b["lastAppliedRevision"] is None
        assert not b["message"].startswith("unchanged")


async def test_a_small_sync_is_applied_while_a_large_one_of_the_same_push_still_applies(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    """One push changes a 300-object sync and a 1-object one: the small one's object is stored
    before the large one's last (its fetch, render and apply did not wait for the other's),
    in the order the server's watch reports the writes."""
    repo = upstream("slow-and-fast")

    def content(value: str) -> dict[str, str]:
        large = [config_map(f"large-{i}", namespace, v=value) for i in range(300)]
        return {
            "apps/large/cms.yaml": yaml.safe_dump_all(large),
            "apps/small/cm.yaml": yaml.safe_dump(config_map("small", namespace, v=value)),
        }

    first = repo.commit(content("1"))
    syncs = {"large": {"path": "apps/large"}, "small": {"path": "apps/small"}}
    async with controller(kube, namespace, repo, git_daemon, tmp_path, syncs) as running:
        await running.wait_for(lambda: all_applied(running, first, ("large", "small")), seconds=60)
        order: list[str] = []  # names, in the order the server stored their new value
        async with anyio.create_task_group() as tasks:
            listed = await running.core.list_namespaced_config_map(namespace)

            async def watch() -> None:
                stream = watching.Watch()
                async for event in stream.stream(
                    running.core.list_namespaced_config_map,
                    namespace,
                    resource_version=listed.metadata.resource_version,
                ):
                    obj = event["object"]
                    if event["type"] == "MODIFIED" and (obj.data or {}).get("v") == "2":
                        order.append(obj.metadata.name)

            tasks.start_soon(watch)
            second = repo.commit(content("2"))
            await running.push_webhook(second, before=first)
            await running.wait_for(
                lambda: all_applied(running, second, ("large", "small")), seconds=60
            )
            with anyio.fail_after(20):
                while len(order) < 301:
                    await anyio.sleep(0.05)
            tasks.cancel_scope.cancel()
        assert order.index("small") < max(
            i for i, name in enumerate(order) if name.startswith("large-")
        ), order[:5]
