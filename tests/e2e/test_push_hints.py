"""A webhook is a hint: `aioreconcile run` against the real git daemon and the real apiserver
applies the ref's head as the Git server reports it, never the SHA a delivery names.

Each case signs a GitHub push with the receiver's secret, as a holder of that secret (or a
replayer of an old delivery with a fresh ``X-GitHub-Delivery``) would.
"""

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from aioreconcile.testing.pytest_plugin import Kube
from tests.e2e.test_controller import (
    Running,
    applied,
    config_map,
    controller,
    manifests,
    secret_env,
)
from tests.git.conftest import Upstream

pytestmark = pytest.mark.integration
__all__ = ["secret_env"]  # the fixture, shared with test_controller


async def stored_value(running: Running) -> str:
    cm = await running.core.read_namespaced_config_map("settings", running.namespace)
    return str(cm.data["v"])


def counter(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample of ``name`` in Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in metrics.splitlines():
        found = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if found and ",".join(sorted(found[1].split(","))) == wanted:
            return float(found[2])
    return 0.0


def side_commit(repo: Upstream, ref: str, files: dict[str, str]) -> str:
    """A commit made off ``main`` and pushed to ``ref`` only; the clone returns to main."""
    repo.git("checkout", "--quiet", "-b", f"side-{ref.replace('/', '-')}")
    for name, text in files.items():
        (repo.work / name).write_text(text)
    repo.git("commit", "--quiet", "--all", "-m", "not on main")
    sha = repo.git("rev-parse", "HEAD")
    repo.git("push", "--quiet", "origin", f"HEAD:{ref}")
    repo.git("checkout", "--quiet", "main")
    return sha


@pytest.mark.parametrize("where", ["other-branch", "pull-request", "dangling"])
async def test_a_push_naming_a_commit_not_on_the_ref_applies_the_refs_head(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
    where: str,
) -> None:
    repo = upstream(f"hint-{where}")
    first = repo.commit(manifests(config_map("settings", namespace, v="1")))
    async with controller(kube, namespace, repo, git_daemon, tmp_path) as running:
        await running.wait_for(lambda: applied(running, first))
        head = repo.commit(manifests(config_map("settings", namespace, v="2")))  # no webhook
        evil_files = manifests(config_map("settings", namespace, v="evil"))
        if where == "other-branch":
            named = side_commit(repo, "refs/heads/feature", evil_files)
        elif where == "pull-request":
            named = side_commit(repo, "refs/pull/1/head", evil_files)
        else:  # pushed under a scratch ref that is deleted again: the object stays, unreachable
            named = side_commit(repo, "refs/scratch/x", evil_files)
            repo.git("push", "--quiet", "origin", ":refs/scratch/x")

        response = await running.push_webhook(named, before=first)

        async def reconciled() -> bool:
            state = await running.sync_state()
            return state["lastAppliedRevision"] in (named, head)

        await running.wait_for(reconciled, seconds=15)
        assert response.status == 202
        assert (await running.sync_state())["lastAppliedRevision"] == head
        assert await stored_value(running) == "2"


async def test_a_replayed_old_delivery_changes_nothing(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    repo = upstream("replay")
    old = repo.commit(manifests(config_map("settings", namespace, v="1")))
    async with controller(kube, namespace, repo, git_daemon, tmp_path) as running:
        await running.wait_for(lambda: applied(running, old))
        new = repo.commit(manifests(config_map("settings", namespace, v="2")))
        await running.push_webhook(new, before=old)
        await running.wait_for(lambda: applied(running, new))

        # The old delivery, re-sent with a new delivery id (push_webhook makes a fresh one): it
        # only says "look now", and the head is already applied.
        replayed = await running.push_webhook(old)

        async def looked() -> bool:
            metrics = await running.metrics()
            seen = counter(metrics, "aioreconcile_push_hints_total", sync="app", hint="not-head")
            state = await running.sync_state()
            return seen >= 1 or state["lastAppliedRevision"] != new

        await running.wait_for(looked, seconds=15)
        assert replayed.status == 202
        assert (await running.sync_state())["lastAppliedRevision"] == new
        assert await stored_value(running) == "2"


async def test_a_branch_forced_back_is_followed_and_counted_as_a_rewind(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    repo = upstream("rewind")
    old = repo.commit(manifests(config_map("settings", namespace, v="1")))
    async with controller(kube, namespace, repo, git_daemon, tmp_path) as running:
        await running.wait_for(lambda: applied(running, old))
        new = repo.commit(manifests(config_map("settings", namespace, v="2")))
        await running.push_webhook(new, before=old)
        await running.wait_for(lambda: applied(running, new))
        assert counter(await running.metrics(), "aioreconcile_ref_rewinds_total", sync="app") == 0

        repo.git("reset", "--quiet", "--hard", old)
        repo.git("push", "--quiet", "--force", "origin", "HEAD:main")
        await running.push_webhook(old, before=new)

        await running.wait_for(lambda: applied(running, old))
        assert await stored_value(running) == "1"
        metrics = await running.metrics()
        assert counter(metrics, "aioreconcile_ref_rewinds_total", sync="app") == 1


async def test_a_poll_follows_a_rewind_without_any_webhook_and_counts_it(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    repo = upstream("poll-rewind")
    old = repo.commit(manifests(config_map("settings", namespace, v="1")))
    new = repo.commit(manifests(config_map("settings", namespace, v="2")))
    async with controller(kube, namespace, repo, git_daemon, tmp_path, interval="1s") as running:
        await running.wait_for(lambda: applied(running, new))

        repo.git("reset", "--quiet", "--hard", old)
        repo.git("push", "--quiet", "--force", "origin", "HEAD:main")

        await running.wait_for(lambda: applied(running, old))
        assert await stored_value(running) == "1"
        metrics = await running.metrics()
        assert counter(metrics, "aioreconcile_ref_rewinds_total", sync="app") == 1
        assert counter(metrics, "aioreconcile_push_hints_total", sync="app", hint="head") == 0
