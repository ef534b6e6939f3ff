"""Git sources against real servers: git daemon and smart HTTP with basic auth on loopback."""

import logging
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest

from aioreconcile.adapters.git import (
    FetchError,
    GitCache,
    GitSource,
    GitTimeoutError,
)
from aioreconcile.engine.config import AuthKind, GitAuth, GitSourceSpec
from aioreconcile.engine.errors import TransientError
from tests.git.conftest import HttpGit, Upstream

MakeUpstream = Callable[[str], Upstream]


def source(cache: GitCache, url: str, ref: str = "main", **spec: object) -> GitSource:
    return cache.source(GitSourceSpec(url=url, ref=ref, **spec))  # type: ignore[arg-type]


def read(tree: Path) -> dict[str, str]:
    return {
        p.relative_to(tree).as_posix(): p.read_text()
        for p in sorted(tree.rglob("*"))
        if p.is_file()
    }


def bare_config(git_source: GitSource, key: str) -> str:
    return subprocess.run(
        ["git", f"--git-dir={git_source.repository}", "config", key],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


# --- resolving, fetching and reading a commit -------------------------------------------------


async def test_pushed_commit_resolves_and_reads_exactly_that_tree(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache
) -> None:
    repo = upstream("app")
    first = repo.commit({"app.yaml": "replicas: 1\n", "base/ns.yaml": "kind: Namespace\n"})
    src = source(cache, git_daemon + "app.git")

    assert await src.resolve() == first
    assert await src.fetch() == first
    tree = await src.checkout(first)
    assert read(tree) == {"app.yaml": "replicas: 1\n", "base/ns.yaml": "kind: Namespace\n"}

    second = repo.commit({"app.yaml": "replicas: 2\n"})
    assert await src.resolve() == second
    assert await src.fetch() == second
    assert read(await src.checkout(second))["app.yaml"] == "replicas: 2\n"
    assert read(await src.checkout(first))["app.yaml"] == "replicas: 1\n"
    assert not (tree / ".git").exists()


async def test_fetch_takes_the_refs_head_by_fetching_the_ref_itself(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache, spawned: list[tuple[str, ...]]
) -> None:
    """What is fetched is what the ref held at that moment: no window between an ls-remote and
    a fetch by id, and no id from elsewhere is ever asked for."""
    repo = upstream("app")
    first = repo.commit({"a.txt": "1\n"})
    src = source(cache, git_daemon + "app.git")
    assert await src.fetch() == first
    second = repo.commit({"a.txt": "2\n"})
    spawned.clear()

    assert await src.fetch() == second

    network = [argv for argv in spawned if "fetch" in argv or "ls-remote" in argv]
    assert len(network) == 1  # one round trip: the ref's full name is known by now
    assert "+refs/heads/main:refs/aioreconcile/refs/heads/main" in network[0]
    assert "--depth=1" not in network[0]  # incremental: the path to the previous head is kept
    assert read(await src.checkout(second)) == {"a.txt": "2\n"}


async def test_is_ancestor_tells_a_fast_forward_from_a_rewind_and_a_rewrite(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache
) -> None:
    repo = upstream("app")
    first = repo.commit({"a.txt": "1\n"})
    src = source(cache, git_daemon + "app.git")
    assert await src.fetch() == first  # shallow: depth 1
    repo.commit({"a.txt": "2\n"})
    third = repo.commit({"a.txt": "3\n"})
    assert await src.fetch() == third
    assert await src.is_ancestor(first, third) is True

    repo.git("reset", "--quiet", "--hard", first)
    repo.git("push", "--quiet", "--force", "origin", "HEAD:main")
    assert await src.fetch() == first
    assert await src.is_ancestor(third, first) is False  # moved back

    repo.git("commit", "--quiet", "--amend", "-m", "rewritten")
    repo.git("push", "--quiet", "--force", "origin", "HEAD:main")
    rewritten = repo.git("rev-parse", "HEAD")
    assert await src.fetch() == rewritten
    assert await src.is_ancestor(first, rewritten) is False  # replaced, not built upon
    assert await src.is_ancestor("f" * 40, rewritten) is None  # never fetched: cannot tell


async def test_webhook_sha_fetches_that_commit_even_when_the_branch_moved_on(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache, spawned: list[tuple[str, ...]]
) -> None:
    repo = upstream("app")
    first = repo.commit({"app.yaml": "v: 1\n"}, "first")
    repo.commit({"app.yaml": "v: 2\n"}, "second")
    src = source(cache, git_daemon + "app.git")

    assert await src.fetch(first) == first
    assert read(await src.checkout(first)) == {"app.yaml": "v: 1\n"}
    fetches = [argv for argv in spawned if "fetch" in argv]
    assert len(fetches) == 1
    assert "--depth=1" in fetches[0]
    assert f"+{first}:refs/aioreconcile/fetched" in fetches[0]


async def test_sha_refused_by_the_server_is_fetched_through_the_ref_deepened(
    upstream: MakeUpstream, git_daemon: str, tmp_path: Path, spawned: list[tuple[str, ...]]
) -> None:
    """Protocol v0 without allowReachableSHA1InWant only serves advertised tips."""
    repo = upstream("app")
    first = repo.commit({"app.yaml": "v: 1\n"}, "first")
    repo.commit({"app.yaml": "v: 2\n"}, "second")
    cache = GitCache(tmp_path / "cache", config={"protocol.version": "0"})
    src = source(cache, git_daemon + "app.git")

    assert await src.fetch(first) == first
    assert read(await src.checkout(first)) == {"app.yaml": "v: 1\n"}
    assert any("--deepen=100" in argv for argv in spawned)


async def test_checkout_fetches_a_commit_it_does_not_have(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache
) -> None:
    repo = upstream("app")
    sha = repo.commit({"a.txt": "a\n"})
    src = source(cache, git_daemon + "app.git")
    assert read(await src.checkout(sha)) == {"a.txt": "a\n"}


@pytest.mark.parametrize("annotated", [False, True], ids=["lightweight", "annotated"])
async def test_tag_resolves_to_its_commit(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache, annotated: bool
) -> None:
    repo = upstream("app")
    tagged = repo.commit({"a.txt": "tagged\n"})
    tag_object = repo.tag("v1.0.0", annotated=annotated)
    repo.commit({"a.txt": "later\n"})
    src = source(cache, git_daemon + "app.git", ref="v1.0.0")

    assert (tag_object != tagged) is annotated
    assert await src.resolve() == tagged
    assert await src.fetch() == tagged
    assert read(await src.checkout(tagged)) == {"a.txt": "tagged\n"}


async def test_full_sha_as_ref_is_used_as_is(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache
) -> None:
    repo = upstream("app")
    pinned = repo.commit({"a.txt": "pinned\n"})
    repo.commit({"a.txt": "later\n"})
    src = source(cache, git_daemon + "app.git", ref=pinned)
    assert await src.resolve() == pinned
    assert await src.fetch() == pinned
    assert read(await src.checkout(pinned)) == {"a.txt": "pinned\n"}


async def test_missing_branch_is_a_clear_fetch_error(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache
) -> None:
    upstream("app").commit({"a.txt": "a\n"})
    src = source(cache, git_daemon + "app.git", ref="no-such-branch")
    with pytest.raises(FetchError, match="has no branch or tag named 'no-such-branch'") as e:
        await src.fetch()
    assert git_daemon + "app.git" in str(e.value)


async def test_missing_repository_is_a_fetch_error_naming_it(
    git_daemon: str, cache: GitCache
) -> None:
    src = source(cache, git_daemon + "nothing-here.git")
    with pytest.raises(FetchError, match=r"nothing-here\.git"):
        await src.resolve()


async def test_commit_info_gives_author_and_subject(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache
) -> None:
    sha = upstream("app").commit({"a.txt": "a\n"}, "Scale the app\n\nBecause load.")
    src = source(cache, git_daemon + "app.git")
    await src.fetch(sha)
    info = await src.commit_info(sha)
    assert info == ("Ada Author <ada@example.com>", "Scale the app")
    assert info.subject == "Scale the app"


async def test_only_the_newest_trees_are_kept(
    upstream: MakeUpstream, git_daemon: str, tmp_path: Path
) -> None:
    repo = upstream("app")
    cache = GitCache(tmp_path / "cache", keep_trees=2)
    src = source(cache, git_daemon + "app.git")
    trees = []
    for n in range(4):
        sha = repo.commit({"a.txt": f"{n}\n"})
        await src.fetch(sha)
        trees.append(await src.checkout(sha))
    assert sorted(p.name for p in src.trees.iterdir()) == sorted(t.name for t in trees[-2:])
    assert not trees[0].exists()
    assert read(trees[-1]) == {"a.txt": "3\n"}


async def test_concurrent_checkouts_of_one_commit_share_one_tree(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache
) -> None:
    sha = upstream("app").commit({"a.txt": "a\n"})
    src = source(cache, git_daemon + "app.git")
    results: list[Path] = []

    async def one() -> None:
        results.append(await src.checkout(sha))

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(one)
    assert len(set(results)) == 1
    assert [p.name for p in src.trees.iterdir()] == [sha]


# --- timeouts -----------------------------------------------------------------------------------


async def test_hung_server_times_out_while_another_repository_fetches(
    upstream: MakeUpstream, git_daemon: str, hung_server: str, cache: GitCache
) -> None:
    sha = upstream("app").commit({"a.txt": "a\n"})
    hung = source(cache, hung_server, timeout_s=2.0)
    healthy = source(cache, git_daemon + "app.git", timeout_s=2.0)
    finished: dict[str, float] = {}
    errors: list[BaseException] = []
    start = time.monotonic()

    async def fetch_hung() -> None:
        try:
            await hung.fetch()
        except FetchError as e:
            errors.append(e)
        finished["hung"] = time.monotonic() - start

    async def fetch_healthy() -> None:
        assert await healthy.fetch() == sha
        finished["healthy"] = time.monotonic() - start

    async with anyio.create_task_group() as group:
        group.start_soon(fetch_hung)
        group.start_soon(fetch_healthy)

    assert finished["healthy"] < 1.5
    assert len(errors) == 1
    assert isinstance(errors[0], GitTimeoutError)
    assert isinstance(errors[0], TransientError)
    assert "within 2 s" in str(errors[0])
    assert 2.0 <= finished["hung"] < 4.0


# --- credentials ------------------------------------------------------------------------------


def with_userinfo(base: str, user: str, password: str) -> str:
    return base.replace("http://", f"http://{user}:{password}@")


async def test_basic_auth_over_http_with_password_from_env_leaks_nowhere(
    upstream: MakeUpstream,
    git_http: HttpGit,
    cache: GitCache,
    spawned: list[tuple[str, ...]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("APP_GIT_TOKEN", git_http.password)
    sha = upstream("app").commit({"a.txt": "secret-free\n"})
    auth = GitAuth(kind=AuthKind.BASIC, username=git_http.username, password_env="APP_GIT_TOKEN")
    src = source(cache, git_http.base + "app.git", auth=auth)

    assert await src.resolve() == sha
    assert await src.fetch() == sha
    assert read(await src.checkout(sha)) == {"a.txt": "secret-free\n"}

    assert git_http.unauthorized >= 1  # the server did ask; the askpass answered
    assert spawned
    assert not [argv for argv in spawned if git_http.password in " ".join(argv)]
    assert git_http.leaking_commands == []
    assert git_http.password not in caplog.text
    assert git_http.password not in bare_config(src, "remote.origin.url")


async def test_password_from_file_works(
    upstream: MakeUpstream, git_http: HttpGit, cache: GitCache, tmp_path: Path
) -> None:
    secret = tmp_path / "token"
    secret.write_text(git_http.password + "\n")
    sha = upstream("app").commit({"a.txt": "a\n"})
    auth = GitAuth(kind=AuthKind.BASIC, username=git_http.username, password_file=str(secret))
    assert await source(cache, git_http.base + "app.git", auth=auth).fetch() == sha


async def test_wrong_password_is_a_fetch_error_without_the_password(
    upstream: MakeUpstream,
    git_http: HttpGit,
    cache: GitCache,
    spawned: list[tuple[str, ...]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wr0ng-pa55word-do-not-print"
    monkeypatch.setenv("APP_GIT_TOKEN", wrong)
    upstream("app").commit({"a.txt": "a\n"})
    auth = GitAuth(kind=AuthKind.BASIC, username=git_http.username, password_env="APP_GIT_TOKEN")
    src = source(cache, git_http.base + "app.git", auth=auth)

    with pytest.raises(FetchError) as e:
        await src.fetch()
    message = str(e.value)
    assert "Authentication failed" in message
    assert git_http.base + "app.git" in message
    assert wrong not in message
    assert not [argv for argv in spawned if wrong in " ".join(argv)]
    assert wrong not in caplog.text


async def test_missing_password_variable_names_the_variable(
    git_http: HttpGit, cache: GitCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("APP_GIT_TOKEN", raising=False)
    auth = GitAuth(kind=AuthKind.BASIC, username="u", password_env="APP_GIT_TOKEN")
    with pytest.raises(FetchError, match="APP_GIT_TOKEN is not set"):
        await source(cache, git_http.base + "app.git", auth=auth).resolve()


async def test_userinfo_in_the_url_is_used_but_never_stored(
    upstream: MakeUpstream,
    git_http: HttpGit,
    cache: GitCache,
    spawned: list[tuple[str, ...]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sha = upstream("app").commit({"a.txt": "a\n"})
    url = with_userinfo(git_http.base, git_http.username, git_http.password) + "app.git"
    src = source(cache, url)

    assert src.url == git_http.base + "app.git"
    assert await src.fetch() == sha
    assert read(await src.checkout(sha)) == {"a.txt": "a\n"}
    assert bare_config(src, "remote.origin.url") == git_http.base + "app.git"
    assert not [argv for argv in spawned if git_http.password in " ".join(argv)]
    assert git_http.leaking_commands == []
    assert git_http.password not in caplog.text
    assert git_http.password not in str(src.remote)
    assert git_http.password not in str(src.cache.root / "repos")


async def test_wrong_password_in_the_url_stays_out_of_the_error(
    upstream: MakeUpstream, git_http: HttpGit, cache: GitCache
) -> None:
    upstream("app").commit({"a.txt": "a\n"})
    wrong = "url-pa55word-do-not-print"
    src = source(cache, with_userinfo(git_http.base, git_http.username, wrong) + "app.git")
    with pytest.raises(FetchError) as e:
        await src.fetch()
    assert wrong not in str(e.value)
    assert git_http.username not in str(e.value)


def test_same_repository_shares_one_cache_whatever_the_credentials(tmp_path: Path) -> None:
    cache = GitCache(tmp_path)
    a = source(cache, "https://a:one@git.example.com/r.git")
    b = source(cache, "https://b:two@git.example.com/r.git/")
    assert a.key == b.key
    assert a.repository == b.repository


RESERVED_PASSWORD = "p#ss?w/rd:x@y%z-do-not-print"


@pytest.mark.parametrize("git_http", [RESERVED_PASSWORD], indirect=True)
async def test_a_percent_encoded_password_with_reserved_characters_authenticates(
    upstream: MakeUpstream, git_http: HttpGit, cache: GitCache
) -> None:
    sha = upstream("app").commit({"a.txt": "a\n"})
    encoded = quote(RESERVED_PASSWORD, safe="")
    src = source(cache, with_userinfo(git_http.base, git_http.username, encoded) + "app.git")

    assert await src.fetch() == sha
    assert src.url == git_http.base + "app.git"
    assert git_http.unauthorized >= 1  # git asked without credentials first, then with them


async def test_a_token_in_the_query_stays_out_of_the_error(cache: GitCache) -> None:
    token = "glpat-query-t0ken-do-not-print"
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    src = source(cache, f"http://127.0.0.1:{port}/app.git?private_token={token}")

    with pytest.raises(FetchError) as e:
        await src.resolve()
    assert "127.0.0.1" in str(e.value)
    assert token not in str(e.value)
    assert token not in src.url


@pytest.mark.parametrize(
    "url",
    [
        "--upload-pack=touch {marker}",
        "--upload-pack=touch {marker};",
        "-u touch {marker}",
    ],
)
async def test_a_url_that_looks_like_an_option_never_runs_a_command(
    cache: GitCache, tmp_path: Path, url: str
) -> None:
    marker = tmp_path / "pwned"
    src = source(cache, url.format(marker=marker))

    with pytest.raises(FetchError):
        await src.resolve()
    with pytest.raises(FetchError):
        await src.fetch()
    assert not marker.exists()
