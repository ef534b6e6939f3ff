"""Git credentials from a Secret's data (CRD mode), read at each call through a reader: a
rotated password is used by the next call, a missing Secret or key is named, and the password
reaches no argv, log line or error. The git server is real (smart HTTP with basic auth); the
reader stands in for the Kubernetes read (tested against the apiserver in tests/e2e)."""

import logging
from collections.abc import Callable, Mapping

import pytest

from aioreconcile.adapters.git import GitCache, GitSource
from aioreconcile.engine.config import AuthKind, DataRef, GitAuth, GitSourceSpec
from aioreconcile.engine.errors import FetchError
from tests.git.conftest import HttpGit, Upstream, free_port

REF = DataRef("Secret", "team", "git-creds")


class Secrets:
    """Secret data by reference, as the Kubernetes adapter would return it now."""

    def __init__(self) -> None:
        self.data: dict[DataRef, dict[str, bytes]] = {}
        self.reads = 0

    async def __call__(self, ref: DataRef) -> Mapping[str, bytes] | None:
        self.reads += 1
        return self.data.get(ref)


def source(cache: GitCache, url: str, secrets: Secrets) -> GitSource:
    auth = GitAuth(kind=AuthKind.SECRET, secret=REF)
    return cache.source(GitSourceSpec(url=url, auth=auth), data=secrets)


async def test_a_rotated_secret_is_used_by_the_next_call_and_leaks_nowhere(
    upstream: Callable[[str], Upstream],
    git_http: HttpGit,
    cache: GitCache,
    spawned: list[tuple[str, ...]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sha = upstream("app").commit({"a.txt": "a\n"})
    secrets = Secrets()
    wrong = "old-t0ken-do-not-print"
    secrets.data[REF] = {"username": git_http.username.encode(), "password": wrong.encode()}
    src = source(cache, git_http.base + "app.git", secrets)

    with pytest.raises(FetchError) as failed:
        await src.resolve()
    assert wrong not in str(failed.value)

    secrets.data[REF] = {
        "username": git_http.username.encode(),
        "password": git_http.password.encode(),
    }
    assert await src.resolve() == sha  # the same source: no restart, no new object
    assert await src.fetch() == sha
    assert secrets.reads == 3  # read at each call
    for secret in (wrong, git_http.password):
        assert not [argv for argv in spawned if secret in " ".join(argv)]
        assert secret not in caplog.text
    assert git_http.leaking_commands == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "Secret team/git-creds holding the git credentials does not exist"),
        ({"username": b"u"}, "Secret team/git-creds has neither password nor identity"),
        ({"identity": b"k"}, "Secret team/git-creds has identity but no known_hosts"),
    ],
)
async def test_a_missing_secret_or_key_is_named(
    git_http: HttpGit, cache: GitCache, data: dict[str, bytes] | None, message: str
) -> None:
    secrets = Secrets()
    if data is not None:
        secrets.data[REF] = data
    with pytest.raises(FetchError, match=message):
        await source(cache, git_http.base + "app.git", secrets).resolve()
    assert not (cache.root / "ssh").exists() or not any((cache.root / "ssh").iterdir())


async def test_an_ssh_identity_lives_on_disk_only_for_its_call(
    cache: GitCache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    identity = b"-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key-do-not-print\n-----END"
    secrets = Secrets()
    secrets.data[REF] = {"identity": identity, "known_hosts": b"127.0.0.1 ssh-ed25519 AAAA\n"}
    closed = free_port()  # nothing listens: ssh runs with our options and cannot connect
    src = source(cache, f"ssh://git@127.0.0.1:{closed}/app.git", secrets)
    with pytest.raises(FetchError) as failed:
        await src.resolve()
    assert "Connection refused" in str(failed.value)  # ssh itself ran
    assert "not-a-real-key" not in str(failed.value)
    assert "not-a-real-key" not in caplog.text
    leftovers = list((cache.root / "ssh").iterdir()) if (cache.root / "ssh").exists() else []
    assert leftovers == []
