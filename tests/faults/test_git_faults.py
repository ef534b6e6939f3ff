"""The Git server fails while pushes arrive: hung for 60 s (accepts, never answers:
``FaultProxy`` in ``hang`` mode in front of the git daemon), then down for 60 s (the daemon
killed with SIGKILL); and the branch forced back.

Invariant, checked on the real apiserver: the status says FetchFailed with the reason; the
fetch is retried with growing delays up to the cap (``run --max-retry-delay``), not in a hot
loop; nothing is pruned or rewritten while Git is away (every object keeps its uid and its
content); the head is applied once the server returns; a rewind is followed, logged and counted.
"""

import itertools
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from kubernetes_asyncio import client

from aioreconcile.testing.faults import start_proxy
from aioreconcile.testing.pytest_plugin import Kube
from tests.faults.conftest import (
    Controller,
    GitServer,
    config_map,
    counter,
    figure,
    manifests,
    sync_config,
    wait_until,
)
from tests.git.conftest import Upstream

pytestmark = [pytest.mark.integration, pytest.mark.faults]


async def snapshot(core: Any, namespace: str) -> dict[str, tuple[str, Any]]:
    listed = await core.list_namespaced_config_map(
        namespace, label_selector="aioreconcile.dev/sync"
    )
    return {cm.metadata.name: (cm.metadata.uid, cm.data) for cm in listed.items}


OUTAGE_S = 60.0
"""How long the Git server stays hung, then down: the issue's 60 s, each."""
RETRY_CAP_S = 8.0
"""``run --max-retry-delay`` here: low enough that the 60 s show the backoff reach its cap."""
JITTER = 0.2  # reactor.queueing.Backoff's
SLACK_S = 1.5  # a loaded machine: the controller's own scheduling, git's start


async def test_git_server_hung_then_down_for_60_s_each_while_pushes_arrive(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_server: GitServer,
    controller_process: Callable[..., Controller],
) -> None:
    core = client.CoreV1Api(kube.api)
    repo = upstream("outage")
    names = [f"cm-{i}" for i in range(20)]
    first = repo.commit(manifests(*(config_map(n, namespace, v="1") for n in names)))
    async with start_proxy("127.0.0.1", git_server.port) as proxy:
        controller = controller_process(
            sync_config(f"git://127.0.0.1:{proxy.port}/outage.git", namespace, timeout="2s"),
            kubeconfig=kube.kubeconfig,
            namespace=namespace,
            extra_args=("--max-retry-delay", f"{RETRY_CAP_S:g}"),
        )
        await controller.start()
        await wait_until(lambda: controller.applied(first), seconds=60, what="the first commit")
        before = await snapshot(core, namespace)
        assert len(before) == len(names)
        unchanged_while_away: list[bool] = []

        async def watch_cluster(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            while True:
                unchanged_while_away.append(await snapshot(core, namespace) == before)
                await anyio.sleep(0.5)

        async def fetch_failed(words: tuple[str, ...]) -> bool:
            state = await controller.status()
            message = str(state["message"])
            return state["reason"] == "FetchFailed" and all(w in message for w in words)

        async with anyio.create_task_group() as watching:
            await watching.start(watch_cluster)

            # Hung for 60 s: the server accepts and never answers.
            proxy.mode = "hang"
            hung_from = len(proxy.opened_at)
            hung_at = time.monotonic()
            second = repo.commit(manifests(*(config_map(n, namespace, v="2") for n in names)))
            assert await controller.push(second, before=first) == 202
            await wait_until(
                lambda: fetch_failed(("did not finish within 2 s",)),
                seconds=30,
                what="FetchFailed naming the timeout",
            )
            await anyio.sleep(OUTAGE_S - (time.monotonic() - hung_at))
            hung = proxy.opened_at[hung_from:]
            assert proxy.hung == len(hung)

            # Down for 60 s: the daemon is killed; connections to it are reset.
            git_server.process.kill9()
            proxy.mode = "forward"
            down_from = len(proxy.opened_at)
            down_at = time.monotonic()
            third = repo.commit(manifests(*(config_map(n, namespace, v="3") for n in names)))
            assert await controller.push(third, before=second) == 202
            await wait_until(
                lambda: fetch_failed(("failed",)), seconds=30, what="FetchFailed, server down"
            )
            await anyio.sleep(OUTAGE_S - (time.monotonic() - down_at))
            down = proxy.opened_at[down_from:]
            state = await controller.status()
            print(f"hung: {len(hung)} attempts; down: {len(down)}; {state['message']!r}")

            watching.cancel_scope.cancel()

        # Back: applied without another push, within one capped retry.
        await git_server.restart()
        back = time.monotonic()
        await wait_until(
            lambda: controller.applied(third), seconds=90, what="the head once Git is back"
        )
        figure("git-hung-then-down-applied-after-return", time.monotonic() - back)

    metrics = await controller.metrics()
    # Retried with growing delays, then at the cap: while hung each attempt is the 2 s timeout
    # plus the delay; while down, failures are instant and every gap is one capped delay.
    hung_gaps = [b - a for a, b in itertools.pairwise(hung)]
    down_gaps = [b - a for a, b in itertools.pairwise(down)]
    print("gaps while hung:", [round(g, 2) for g in hung_gaps])
    print("gaps while down:", [round(g, 2) for g in down_gaps])
    assert len(hung) >= 8
    assert hung_gaps[-1] > 2 * hung_gaps[0]
    assert all(g <= 2 + RETRY_CAP_S * (1 + JITTER) + SLACK_S for g in hung_gaps)
    assert len(down) >= 5
    assert all(
        RETRY_CAP_S * (1 - JITTER) - SLACK_S <= g <= RETRY_CAP_S * (1 + JITTER) + SLACK_S
        for g in down_gaps
    )
    delays = [
        float(found[1])
        for line in controller.log()
        if (found := re.search(r"retrying in ([0-9.]+)s", line.get("message", "")))
    ]
    print("delays logged:", delays)
    assert min(delays) < 0.2
    assert max(delays) <= RETRY_CAP_S * (1 + JITTER)
    assert counter(metrics, "aioreconcile_queue_retries_total") >= len(hung) + len(down) - 2
    # Nothing pruned or rewritten while Git was away (2 x 60 s, looked at every 0.5 s).
    assert len(unchanged_while_away) >= 2 * OUTAGE_S
    assert all(unchanged_while_away)
    after = await snapshot(core, namespace)
    assert {n: uid for n, (uid, _) in after.items()} == {n: uid for n, (uid, _) in before.items()}
    assert all(data == {"v": "3"} for _, data in after.values())


async def test_a_branch_forced_back_is_followed_logged_and_counted(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_server: GitServer,
    controller_process: Callable[..., Controller],
) -> None:
    core = client.CoreV1Api(kube.api)
    repo = upstream("rewind")
    names = [f"cm-{i}" for i in range(50)]
    old = repo.commit(manifests(*(config_map(n, namespace, v="old") for n in names)))
    controller = controller_process(
        sync_config(f"{git_server.base}rewind.git", namespace),
        kubeconfig=kube.kubeconfig,
        namespace=namespace,
    )
    await controller.start()
    await wait_until(lambda: controller.applied(old), seconds=60, what="the old commit")
    added = [f"new-{i}" for i in range(10)]
    new = repo.commit(
        manifests(*(config_map(n, namespace, v="new") for n in [*names, *added])), "new"
    )
    assert await controller.push(new, before=old) == 202
    await wait_until(lambda: controller.applied(new), seconds=60, what="the new commit")
    uids = {n: uid for n, (uid, _) in (await snapshot(core, namespace)).items()}

    repo.git("reset", "--quiet", "--hard", old)
    repo.git("push", "--quiet", "--force", "origin", "HEAD:main")
    forced = time.monotonic()
    assert await controller.push(old, before=new) == 202
    await wait_until(lambda: controller.applied(old), seconds=60, what="the rewind followed")
    figure("git-force-push-back-followed", time.monotonic() - forced)

    after = await snapshot(core, namespace)
    assert sorted(after) == sorted(names)  # what only the newer commit had is pruned
    assert all(data == {"v": "old"} for _, data in after.values())
    assert all(uid == uids[n] for n, (uid, _) in after.items())  # updated, not recreated
    metrics = await controller.metrics()
    assert counter(metrics, "aioreconcile_ref_rewinds_total", sync=controller.sync) == 1
    warned = [
        line
        for line in controller.log()
        if line.get("message", "").startswith("the ref moved backwards")
    ]
    assert len(warned) == 1
    assert (warned[0]["previous"], warned[0]["revision"]) == (new, old)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (we run as root in tests and CI), unmounted afterwards."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


@pytest.mark.parametrize("where", ["checkout", "fetch"])
async def test_a_full_git_cache_disk_fails_the_fetch_naming_the_disk_and_renders_nothing(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_server: GitServer,
    controller_process: Callable[..., Controller],
    small_disk: Path,
    where: str,
) -> None:
    core = client.CoreV1Api(kube.api)
    repo = upstream(f"full-{where}")
    names = [f"cm-{i}" for i in range(10)]
    first = repo.commit(manifests(*(config_map(n, namespace, v="1") for n in names)))
    cache = small_disk / "cache"
    controller = controller_process(
        sync_config(f"{git_server.base}full-{where}.git", namespace),
        kubeconfig=kube.kubeconfig,
        namespace=namespace,
        cache_dir=cache,
    )
    await controller.start()
    await wait_until(lambda: controller.applied(first), seconds=60, what="the first commit")
    before = await snapshot(core, namespace)

    # "checkout": 4 MiB that compress to a few KiB: the fetch fits, laying out the tree does
    # not. "fetch": 2 MiB of random bytes: the pack itself does not fit.
    big = b"a" * (4 << 20) if where == "checkout" else os.urandom(2 << 20)
    (repo.work / "assets").mkdir()
    (repo.work / "assets" / "big.bin").write_bytes(big)
    second = repo.commit(manifests(*(config_map(n, namespace, v="2") for n in names)), "big")
    assert await controller.push(second, before=first) == 202

    async def failed() -> bool:
        state = await controller.status()
        return bool(state["reason"] == "FetchFailed")

    await wait_until(failed, seconds=60, what="FetchFailed")
    state = await controller.status()
    print(f"{where}: {state['message']!r}")
    assert f"the disk of the git cache {cache} is full" in state["message"]
    assert state["lastAppliedRevision"] == first
    trees = [p.name for p in cache.glob("trees/*/*")]
    assert second not in trees
    assert not [t for t in trees if t.startswith(".tmp-")]
    assert await snapshot(core, namespace) == before  # nothing of the commit applied or pruned
