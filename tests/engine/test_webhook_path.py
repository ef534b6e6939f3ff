"""A Receiver's URL path: derived from its token, name and namespace, never guessable from the
name, and never the same for two Receivers."""

import hashlib
import re

import pytest

from aioreconcile.engine.receivers import webhook_path


def test_path_is_hooks_and_the_sha256_of_token_name_and_namespace() -> None:
    expected = hashlib.sha256(b"s3cret/github/flux-system").hexdigest()

    assert webhook_path("github", "flux-system", token="s3cret") == f"/hooks/{expected}"


def test_known_value_is_stable_across_releases() -> None:
    # A changed derivation would silently break every configured webhook: pin one value.
    assert webhook_path("github", "default", token="token") == (
        "/hooks/8c6714eb53d29593e2aa130a453ed15097851561de7ce9b2388f22a2e5183ea8"
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("github", "default", "t"), ("github", "default", "u")),  # token rotated
        (("github", "default", "t"), ("gitlab", "default", "t")),  # another name
        (("github", "default", "t"), ("github", "prod", "t")),  # another namespace
        (("ab", "c", "t"), ("a", "bc", "t")),  # Flux's concatenation makes these equal
    ],
    ids=["token", "name", "namespace", "name-namespace-boundary"],
)
def test_paths_differ_when_any_part_differs(
    first: tuple[str, str, str], second: tuple[str, str, str]
) -> None:
    name, namespace, token = first
    other_name, other_namespace, other_token = second

    assert webhook_path(name, namespace, token=token) != webhook_path(
        other_name, other_namespace, token=other_token
    )


def test_path_does_not_contain_the_token_or_the_name() -> None:
    path = webhook_path("github", "default", token="s3cret-token")

    assert re.fullmatch(r"/hooks/[0-9a-f]{64}", path)
    assert "s3cret" not in path
    assert "github" not in path
