"""What a heal asks of the apiserver, counted by the apiserver itself (``apiserver_request_total``):
a heal of a watch event is one server-side apply and no read; a deleted object is read once and
created again; a stale event costs one apply that changes nothing. The controller in-process (as
``run`` wires it) against the real apiserver and a real git daemon, polling once at start only."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.model import ObjectRef
from aioreconcile.testing.pytest_plugin import Kube
from tests.e2e.test_safety_net import Running, config_map, controller, files
from tests.git.conftest import Upstream

pytestmark = pytest.mark.integration

NO_POLL_S = 3600.0  # the first poll applies; none after it adds a request


async def config_map_requests(kube: Kube) -> dict[str, float]:
    """Requests for ConfigMaps the apiserver has served so far, by verb (GET, APPLY, ...)."""
    response = await kube.api.call_api(
        "/metrics", "GET", _preload_content=False, auth_settings=["BearerToken"]
    )
    text = (await response.read()).decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and 'resource="configmaps"' in line:
            verb = line.partition('verb="')[2].partition('"')[0]
            counts[verb] = counts.get(verb, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


async def requests_since(kube: Kube, before: dict[str, float]) -> dict[str, float]:
    after = await config_map_requests(kube)
    return {verb: n - before.get(verb, 0.0) for verb, n in after.items()}


async def heals(running: Running, n: int) -> None:
    async def healed() -> bool:
        return running.state.heals >= n

    await running.wait_for(healed, seconds=20)


async def applied_once(running: Running, sha: str) -> None:
    await running.wait_for(lambda: running.applied(sha))


async def test_a_heal_of_a_watch_event_is_one_apply_and_no_read(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    repo = upstream("one-request")
    sha = repo.commit(files(config_map("settings", namespace, v="git")))
    async with controller(
        kube, namespace, repo, git_daemon, tmp_path, interval_s=NO_POLL_S
    ) as running:
        await applied_once(running, sha)
        before = await config_map_requests(kube)

        await running.core.patch_namespaced_config_map(
            "settings", namespace, {"data": {"v": "edited"}}, field_manager="intruder"
        )
        await heals(running, 1)

        sent = await requests_since(kube, before)
        assert sent.get("GET", 0.0) == 0, sent  # judged and applied on the event's object
        assert sent.get("APPLY", 0.0) == 1, sent
        assert await running.data("settings") == {"v": "git"}


async def test_a_deleted_object_is_read_once_and_created_again(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    repo = upstream("recreate")
    sha = repo.commit(files(config_map("settings", namespace, v="git")))
    async with controller(
        kube, namespace, repo, git_daemon, tmp_path, interval_s=NO_POLL_S
    ) as running:
        await applied_once(running, sha)
        before = await config_map_requests(kube)

        await running.core.delete_namespaced_config_map("settings", namespace)
        await heals(running, 1)

        sent = await requests_since(kube, before)
        # Deleted or only stripped of our labels: the heal reads it to tell which.
        assert sent.get("GET", 0.0) == 1, sent
        assert sent.get("APPLY", 0.0) == 1, sent
        assert await running.data("settings") == {"v": "git"}


async def test_a_stale_event_costs_one_apply_that_changes_nothing(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    repo = upstream("stale-event")
    sha = repo.commit(files(config_map("settings", namespace, v="git")))
    async with controller(
        kube, namespace, repo, git_daemon, tmp_path, interval_s=NO_POLL_S
    ) as running:
        await applied_once(running, sha)
        edited = await running.core.patch_namespaced_config_map(
            "settings", namespace, {"data": {"v": "edited"}}, field_manager="intruder"
        )
        stale: dict[str, Any] = kube.api.sanitize_for_serialization(edited)
        await heals(running, 1)
        healed = await running.core.read_namespaced_config_map("settings", namespace)
        before = await config_map_requests(kube)

        # The edit's event again, after its heal (a replay): judged drifted, healed from it.
        running.controller.on_watch_event(
            WatchEvent(EventType.MODIFIED, ObjectRef.of(stale), stale)
        )

        async def applied() -> bool:
            return (await requests_since(kube, before)).get("APPLY", 0.0) >= 1

        await running.wait_for(applied, seconds=20)
        await anyio.sleep(0.5)  # room for anything more it would (wrongly) do

        sent = await requests_since(kube, before)
        now = await running.core.read_namespaced_config_map("settings", namespace)
        assert sent.get("APPLY", 0.0) == 1, sent
        assert now.metadata.resource_version == healed.metadata.resource_version  # no write
        assert now.data == {"v": "git"}
        assert running.state.heals == 1  # an apply that changed nothing heals nothing
