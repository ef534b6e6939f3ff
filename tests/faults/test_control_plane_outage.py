"""The control plane goes away under push and drift traffic: etcd frozen (SIGSTOP) for 20 s, or
kube-apiserver stopped (SIGTERM, or SIGKILL) and started again.

Invariant, checked on the real apiserver: every push made during the outage is applied after
it (the last one's content on every object); every edit another writer made during the
outage (its request held by the apiserver, or retried) is healed after it.
"""

import random
import time
from collections.abc import Callable
from typing import Any

import anyio
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

OUTAGE_S = 20.0


async def all_hold(core: Any, namespace: str, names: list[str], value: str) -> bool:
    try:
        listed = await core.list_namespaced_config_map(namespace, _request_timeout=10)
    except Exception:  # the control plane is still coming back
        return False
    found = {cm.metadata.name: cm.data for cm in listed.items}
    return all(found.get(n) == {"v": value} for n in names)


@pytest.mark.parametrize("fault", ["etcd-stopped-20s", "apiserver-restart", "apiserver-kill9"])
async def test_pushes_and_drift_during_a_control_plane_outage_all_land_after_it(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_server: GitServer,
    controller_process: Callable[..., Controller],
    fault: str,
) -> None:
    core = client.CoreV1Api(kube.api)
    plane = kube.control_plane
    repo = upstream(f"outage-{fault}")
    names = [f"cm-{i}" for i in range(30)]
    first = repo.commit(manifests(*(config_map(n, namespace, v="1") for n in names)))
    controller = controller_process(
        sync_config(f"{git_server.base}outage-{fault}.git", namespace),
        kubeconfig=kube.kubeconfig,
        namespace=namespace,
    )
    await controller.start()
    await wait_until(lambda: controller.applied(first), seconds=60, what="the first commit")
    edits: list[str] = []

    async def drift(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            name = random.choice(names)
            try:
                await core.patch_namespaced_config_map(
                    name,
                    namespace,
                    {"data": {"v": "drifted"}},
                    field_manager="intruder",
                    _request_timeout=60,
                )
                edits.append(name)
            except Exception:  # refused or timed out while the control plane is away
                await anyio.sleep(0.2)
            await anyio.sleep(0.3)

    final_names = [*names, "late"]
    async with anyio.create_task_group() as traffic:
        await traffic.start(drift)
        await anyio.sleep(1)
        if fault == "etcd-stopped-20s":
            plane.etcd.pause()
        elif fault == "apiserver-kill9":
            plane.apiserver.kill9()  # no graceful end of the watches: their sockets just die
        else:
            await plane.stop_apiserver()
        try:
            began = time.monotonic()
            second = repo.commit(manifests(*(config_map(n, namespace, v="2") for n in names)))
            assert await controller.push(second, before=first) == 202
            await anyio.sleep(OUTAGE_S / 4 if fault == "etcd-stopped-20s" else 2)
            third = repo.commit(
                manifests(*(config_map(n, namespace, v="3") for n in final_names)), "late"
            )
            assert await controller.push(third, before=second) == 202
            if fault == "etcd-stopped-20s":
                await anyio.sleep(OUTAGE_S - (time.monotonic() - began))
            else:
                await anyio.sleep(3)
            during = await controller.status()
        finally:
            if fault == "etcd-stopped-20s":
                plane.etcd.resume()
            else:
                await plane.start_apiserver()
        back = time.monotonic()
        await anyio.sleep(2)  # drift goes on right after the outage, too
        traffic.cancel_scope.cancel()
    quiet = time.monotonic()

    async def converged() -> bool:
        return await controller.applied(third) and await all_hold(core, namespace, final_names, "3")

    await wait_until(converged, seconds=120, what="every push applied and every drift healed")
    # The drift goes on 2 s past the outage, so convergence is timed from both ends.
    figure(f"{fault}-converged-after-outage-end", time.monotonic() - back)
    figure(f"{fault}-converged-after-last-edit", time.monotonic() - quiet)
    # Requests the apiserver held through the outage may land late: they are healed too.
    await anyio.sleep(2)
    await wait_until(converged, seconds=30, what="late edits healed")
    state = await controller.status()
    print(f"{fault}: during the outage {during['reason']!r}: {during['message'][:200]!r}")
    print(f"{fault}: {len(edits)} edits landed, {state['driftHeals']} heals")
    assert state["reason"] == "ReconciliationSucceeded"
    assert edits, "no edit landed: the drift traffic tested nothing"
    assert state["driftHeals"] >= 1


async def test_a_single_push_during_an_apiserver_outage_is_applied_when_it_returns(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_server: GitServer,
    controller_process: Callable[..., Controller],
) -> None:
    """Nothing else happens after the push (no second push, polls an hour apart): the failure
    to reach the apiserver must be retried, not taken for a broken source."""
    repo = upstream("lone-push")
    first = repo.commit(manifests(config_map("settings", namespace, v="1")))
    controller = controller_process(
        sync_config(f"{git_server.base}lone-push.git", namespace),
        kubeconfig=kube.kubeconfig,
        namespace=namespace,
    )
    await controller.start()
    await wait_until(lambda: controller.applied(first), seconds=60, what="the first commit")
    await kube.control_plane.stop_apiserver()
    try:
        second = repo.commit(manifests(config_map("settings", namespace, v="2")))
        assert await controller.push(second, before=first) == 202

        async def failed() -> bool:
            state = await controller.status()
            return bool(
                state["lastAttemptedRevision"] == second
                and state["reason"] != "ReconciliationSucceeded"
            )

        await wait_until(failed, seconds=60, what="the push failing while the apiserver is away")
        during = await controller.status()
        print(f"during the outage: {during['reason']}: {during['message'][:160]}")
        await anyio.sleep(2)
    finally:
        await kube.control_plane.start_apiserver()
    back = time.monotonic()
    await wait_until(
        lambda: controller.applied(second), seconds=30, what="the push applied once back"
    )
    figure("apiserver-restart-lone-push-applied", time.monotonic() - back)
