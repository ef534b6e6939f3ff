"""kill -9 of the controller in the middle of applying 1,000 objects, then a restart.

Invariant, checked on the real apiserver: the cluster converges to the ref's head; no object is
lost; nothing Git still declares is deleted (each survivor keeps its uid: deleted and
recreated would show a new one); what left Git is pruned; the inventory names exactly the head's
objects.
"""

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes_asyncio import client

from aioreconcile.testing.pytest_plugin import Kube
from tests.faults.conftest import (
    Controller,
    GitServer,
    config_map,
    figure,
    manifests,
    sync_config,
    wait_until,
)
from tests.git.conftest import Upstream

pytestmark = [pytest.mark.integration, pytest.mark.faults]

OBJECTS = 1000
MOVED = 100  # names that leave Git in the second commit, and as many new ones


async def live_config_maps(core: Any, namespace: str) -> dict[str, dict[str, Any]]:
    """name -> {uid, revision, data} of every ConfigMap (raw JSON: 1,000 models are slow)."""
    response = await core.list_namespaced_config_map(namespace, _preload_content=False)
    items = json.loads(await response.read())["items"]
    return {
        item["metadata"]["name"]: {
            "uid": item["metadata"]["uid"],
            "revision": (item["metadata"].get("annotations") or {}).get(
                "aioreconcile.dev/revision"
            ),
            "data": item.get("data"),
        }
        for item in items
    }


async def test_kill_9_during_an_apply_of_1000_objects_converges_with_nothing_lost(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_server: GitServer,
    controller_process: Callable[..., Controller],
) -> None:
    core = client.CoreV1Api(kube.api)
    repo = upstream("crash")
    first_names = [f"cm-{i}" for i in range(OBJECTS)]
    first = repo.commit(
        manifests(*(config_map(n, namespace, v="1") for n in first_names)), "1,000 objects"
    )
    controller = controller_process(
        sync_config(f"{git_server.base}crash.git", namespace),
        kubeconfig=kube.kubeconfig,
        namespace=namespace,
    )
    await controller.start()
    await wait_until(lambda: controller.applied(first), seconds=180, what="the first commit")
    before = await live_config_maps(core, namespace)
    controller.process.kill9()

    # The second commit changes every object, drops MOVED of them and adds as many.
    second_names = [f"cm-{i}" for i in range(MOVED, OBJECTS + MOVED)]
    second = repo.commit(
        manifests(*(config_map(n, namespace, v="2") for n in second_names)), "moved"
    )
    await controller.start()  # its first poll applies the second commit

    async def applying() -> bool:
        live = await live_config_maps(core, namespace)
        return sum(1 for o in live.values() if o["revision"] == second) >= 50

    await wait_until(applying, seconds=120, what="the second apply to start writing")
    controller.process.kill9()
    live = await live_config_maps(core, namespace)
    written_at_kill = sum(1 for o in live.values() if o["revision"] == second)
    assert written_at_kill < OBJECTS, "the apply finished before the kill: nothing was tested"

    restarted = time.monotonic()
    await controller.start()
    await wait_until(lambda: controller.applied(second), seconds=180, what="convergence")
    converged_s = time.monotonic() - restarted
    figure("controller-kill9-1000-objects", converged_s)
    print(f"killed with {written_at_kill}/{OBJECTS} objects of the second commit written")

    live = await live_config_maps(core, namespace)
    inventory_name = f"aioreconcile-inventory-{controller.sync}"
    inventory = live.pop(inventory_name)
    live.pop("kube-root-ca.crt", None)
    assert sorted(live) == sorted(second_names)  # nothing lost, the moved ones pruned
    assert all(o["revision"] == second and o["data"] == {"v": "2"} for o in live.values())
    kept = set(first_names) & set(second_names)
    assert {n: live[n]["uid"] for n in kept} == {n: before[n]["uid"] for n in kept}
    entries = json.loads(inventory["data"]["entries.json"])
    assert sorted(e["id"].split("_")[1] for e in entries) == sorted(second_names)
    state = await controller.status()
    assert state["reason"] == "ReconciliationSucceeded"
    assert state["inventorySize"] == OBJECTS
