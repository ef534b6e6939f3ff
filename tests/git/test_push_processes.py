"""The Git work of a push after the fetch: few processes, same answers.

A push costs one ``git fetch`` and then as few local git processes as give the reactor what it
asks for: the head, its author and subject, whether it builds on the applied commit, its files
laid out, and what changed since the applied commit. Each answer is checked against git itself.
"""

import itertools
import os
import shutil
import subprocess
from collections.abc import Callable

import anyio

from aioreconcile.adapters.git import GitCache
from aioreconcile.engine.config import GitSourceSpec
from tests.git.conftest import HttpGit, Upstream, git_commands

MakeUpstream = Callable[[str], Upstream]


def with_userinfo_url(http: HttpGit) -> str:
    return http.base.replace("http://", f"http://{http.username}:{http.password}@")


def tree_symlinks(git_dir: str, sha: str) -> frozenset[str]:
    """The symbolic links of a commit, as ``git ls-tree`` lists them."""
    listing = subprocess.run(
        ["git", f"--git-dir={git_dir}", "ls-tree", "-r", "-z", "--full-tree", sha],
        capture_output=True,
        check=True,
    ).stdout.decode()
    return frozenset(e.partition("\t")[2] for e in listing.split("\0") if e.startswith("120000 "))


async def test_a_push_costs_one_fetch_and_three_local_git_processes(
    upstream: MakeUpstream, git_http: HttpGit, cache: GitCache, spawned: list[tuple[str, ...]]
) -> None:
    """Over smart HTTP, as a push reaches the reactor: fetch the head, tell whether it builds
    on the applied commit, lay it out, read author and subject, diff it against the applied
    one. Before: ten processes (two rev-parse, merge-base, cat-file, read-tree, checkout-index,
    log, diff, ls-tree and the fetch)."""
    repo = upstream("app")
    files = {f"apps/a/{i}.yaml": f"{i}\n" for i in range(20)}
    applied = repo.commit({**files, "apps/b/y.yaml": "1\n"})
    src = cache.source(
        GitSourceSpec(url=with_userinfo_url(git_http) + "app.git", ref="main", path="apps/a")
    )
    assert await src.fetch() == applied
    await src.checkout(applied)
    assert await src.diff(applied, applied) is not None
    head = repo.commit({f"apps/a/{i}.yaml": f"{i}-2\n" for i in range(20)})
    spawned.clear()

    assert await src.fetch() == head
    assert await src.is_ancestor(applied, head) is True
    tree = await src.checkout(head)
    info = await src.commit_info(head)
    diff = await src.diff(applied, head)

    assert git_commands(spawned) == ["fetch", "log", "read-tree", "diff-tree"]
    assert (tree / "apps/a/3.yaml").read_text() == "3-2\n"
    assert (tree / "apps/b/y.yaml").read_text() == "1\n"
    assert info.subject
    assert "@" in info.author
    assert diff is not None
    assert sorted(diff.changed) == sorted(f"apps/a/{i}.yaml" for i in range(20))
    # The pack is kept as it came (no loose object per blob: ``fetch.unpackLimit=1``).
    loose = [p for p in (src.repository / "objects").iterdir() if len(p.name) == 2]
    assert not any(any(d.iterdir()) for d in loose)


async def test_symlinks_of_each_head_stay_right_when_diffs_build_on_the_last_one(
    upstream: MakeUpstream, git_http: HttpGit, cache: GitCache
) -> None:
    """The links of the newer commit are carried from the older one's through the raw diff:
    a link added, a directory replaced by a link, a link replaced by a directory, a link
    replaced by a file, a link removed. Each answer equals ``ls-tree`` of that commit, and a
    fresh cache (nothing carried) says the same."""
    repo = upstream("links")
    commits = [repo.commit({"apps/a/x.yaml": "1\n", "apps/d/z.yaml": "1\n"})]
    os.symlink("a", repo.work / "apps" / "l1")
    commits.append(repo.commit({"apps/a/x.yaml": "2\n"}))
    shutil.rmtree(repo.work / "apps" / "d")
    os.symlink("a", repo.work / "apps" / "d")
    commits.append(repo.commit({}, message="d is a link now"))
    (repo.work / "apps" / "l1").unlink()
    commits.append(repo.commit({"apps/l1/y.yaml": "dir\n"}))
    (repo.work / "apps" / "d").unlink()
    commits.append(repo.commit({"apps/d": "a file\n"}))
    os.symlink("x.yaml", repo.work / "apps" / "a" / "l2")
    commits.append(repo.commit({}, message="l2"))
    (repo.work / "apps" / "a" / "l2").unlink()
    commits.append(repo.commit({}, message="no links"))

    url = with_userinfo_url(git_http) + "links.git"
    src = cache.source(GitSourceSpec(url=url, ref="main"))
    # Every commit fetched by id; then each pair diffed in order, so each diff builds on the
    # last one's links.
    for sha in commits:
        assert await src.fetch(sha) == sha
    fresh = GitCache(cache.root.parent / "fresh").source(GitSourceSpec(url=url, ref="main"))
    for sha in commits:
        await fresh.fetch(sha)
    for older, newer in itertools.pairwise(commits):
        carried = await src.diff(older, newer)
        fresh.cache.answers.clear()  # every answer of ``fresh`` from ls-tree alone
        alone = await fresh.diff(older, newer)
        truth = tree_symlinks(str(src.repository), newer)
        assert carried is not None
        assert alone is not None
        assert carried.symlinks == truth == alone.symlinks, newer
        assert carried.changed == alone.changed


async def test_a_checkout_after_the_cache_repository_vanished_fetches_again(
    upstream: MakeUpstream, git_http: HttpGit, cache: GitCache
) -> None:
    """What the cache remembers of a fetched head (present, its author) does not outlive the
    repository that holds it: an operator wiping the directory costs a fetch, not a failure."""
    repo = upstream("gone")
    head = repo.commit({"a.yaml": "1\n"})
    src = cache.source(GitSourceSpec(url=with_userinfo_url(git_http) + "gone.git", ref="main"))
    assert await src.fetch() == head
    shutil.rmtree(src.repository)

    tree = await src.checkout(head)

    assert (tree / "a.yaml").read_text() == "1\n"
    assert (await src.commit_info(head)).subject


async def test_syncs_asking_the_same_diff_together_share_one_git_process(
    upstream: MakeUpstream, git_http: HttpGit, cache: GitCache, spawned: list[tuple[str, ...]]
) -> None:
    """The syncs of one push ask the same pair at once, after the shared fetch: one of them
    runs git, the others wait for its answer (it was one ``diff`` and one ``ls-tree`` each:
    ten processes for five syncs on two cores)."""
    repo = upstream("many")
    applied = repo.commit({f"apps/s{i}/x.yaml": "1\n" for i in range(5)})
    url = with_userinfo_url(git_http) + "many.git"
    sources = [
        cache.source(GitSourceSpec(url=url, ref="main", path=f"apps/s{i}")) for i in range(5)
    ]
    assert await sources[0].fetch() == applied
    head = repo.commit({"apps/s0/x.yaml": "2\n"})
    assert await sources[0].fetch() == head
    spawned.clear()
    answers: list[object] = []

    async def one(index: int) -> None:
        answers.append(await sources[index].diff(applied, head))

    async with anyio.create_task_group() as group:
        for index in range(5):
            group.start_soon(one, index)

    assert git_commands(spawned) in (["diff-tree", "ls-tree"], ["ls-tree", "diff-tree"])
    assert len(answers) == 5
    assert all(a == answers[0] for a in answers)
    assert answers[0] is not None


async def test_fetches_let_git_look_at_its_housekeeping_once_every_sixteen(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache, spawned: list[tuple[str, ...]]
) -> None:
    """``git fetch`` starts ``git maintenance run --auto`` after every fetch (one process more
    on each push, only to find nothing to do); the cache lets it run on a repository's first
    fetch and every sixteenth after, so loose objects and packs are still collected."""
    repo = upstream("tidy")
    repo.commit({"a.yaml": "1\n"})
    src = cache.source(GitSourceSpec(url=git_daemon + "tidy.git", ref="main"))
    for _ in range(18):
        await src.fetch()

    fetches = [argv for argv in spawned if "fetch" in argv]
    housekeeping = [i for i, argv in enumerate(fetches) if "maintenance.auto=false" not in argv]
    assert len(fetches) == 18
    assert housekeeping == [0, 16]
