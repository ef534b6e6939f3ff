"""Syncs of one repository and ref share a fetch of its head, and only one that started after
their trigger arrived; ``diff`` lists what changed between two fetched commits."""

import os
import time
from collections.abc import Callable, Sequence

import anyio

from aioreconcile.adapters.git import GitCache
from aioreconcile.engine.config import GitAuth, GitSourceSpec
from tests.git.conftest import Upstream

MakeUpstream = Callable[[str], Upstream]


def fetch_count(recorded: Sequence[tuple[str, ...]]) -> int:
    return sum(1 for argv in recorded if "fetch" in argv)


async def test_syncs_triggered_together_share_one_fetch_of_the_head(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache, spawned: list[tuple[str, ...]]
) -> None:
    repo = upstream("shared")
    first = repo.commit({"a/x.yaml": "1\n", "b/y.yaml": "1\n"})
    url = git_daemon + "shared.git"
    sources = [cache.source(GitSourceSpec(url=url, ref="main", path=p)) for p in "abc"]
    await sources[0].fetch()  # the repository exists and the ref was fetched once

    second = repo.commit({"a/x.yaml": "2\n"})
    trigger = time.monotonic()
    spawned.clear()
    heads: list[str] = []

    async def one(index: int) -> None:
        heads.append(await sources[index].fetch(not_before=trigger))

    async with anyio.create_task_group() as tasks:
        for index in range(3):
            tasks.start_soon(one, index)

    assert heads == [second] * 3
    assert fetch_count(spawned) == 1
    assert first != second


async def test_a_fetch_that_started_before_the_trigger_is_not_reused(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache, spawned: list[tuple[str, ...]]
) -> None:
    repo = upstream("later")
    repo.commit({"a/x.yaml": "1\n"})
    url = git_daemon + "later.git"
    one, other = (cache.source(GitSourceSpec(url=url, ref="main", path=p)) for p in "ab")
    await one.fetch(not_before=time.monotonic())
    second = repo.commit({"a/x.yaml": "2\n"})
    spawned.clear()

    # The push arrived after ``one``'s fetch started: ``other`` must ask the server itself.
    assert await other.fetch(not_before=time.monotonic()) == second
    assert fetch_count(spawned) == 1
    # Without a trigger time (a retry, a CLI call) nothing is shared either.
    assert await other.fetch() == second
    assert fetch_count(spawned) == 2


async def test_diff_lists_changed_paths_and_symlinks_of_the_newer_commit(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache
) -> None:
    repo = upstream("diffs")
    first = repo.commit({"apps/a/x.yaml": "1\n", "apps/b/y.yaml": "1\n"})
    src = cache.source(GitSourceSpec(url=git_daemon + "diffs.git", ref="main"))
    assert await src.fetch() == first
    os.symlink("../apps/a", repo.work / "apps" / "link")
    second = repo.commit({"apps/b/y.yaml": "2\n", "base/z.yaml": "new\n"})
    assert await src.fetch() == second  # incremental: the history between them is kept

    diff = await src.diff(first, second)
    assert diff is not None
    assert sorted(diff.changed) == ["apps/b/y.yaml", "apps/link", "base/z.yaml"]
    assert diff.symlinks == frozenset({"apps/link"})
    # A commit the cache does not hold cannot be compared with.
    missing = "0" * 40
    assert await src.diff(missing, second) is None


async def test_sources_with_other_credentials_never_share_a_fetch(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache, spawned: list[tuple[str, ...]]
) -> None:
    repo = upstream("credentials")
    repo.commit({"a/x.yaml": "1\n"})
    url = git_daemon + "credentials.git"
    plain = cache.source(GitSourceSpec(url=url, ref="main"))
    other = cache.source(
        GitSourceSpec(url=url, ref="main", auth=GitAuth(known_hosts_file="/nonexistent"))
    )
    await plain.fetch()
    head = repo.commit({"a/x.yaml": "2\n"})
    trigger = time.monotonic()
    spawned.clear()

    assert await plain.fetch(not_before=trigger) == head
    assert await other.fetch(not_before=trigger) == head
    assert fetch_count(spawned) == 2
