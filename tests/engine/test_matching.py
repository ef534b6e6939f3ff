"""Which syncs a push triggers: repository URLs compared in one normal form, refs tracked."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aioreconcile.engine.config import GitSourceSpec, Provider, ReceiverSpec, SyncSpec
from aioreconcile.engine.matching import (
    in_scope,
    matching_syncs,
    normalise_repository_url,
    tracks,
    triggers_for,
)
from aioreconcile.engine.triggers import Push, PushEvent

OLD = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
NEW = "59b20b8d5c6ff8d09518454d4dd8b7a30f095ab5"
ZERO = "0" * 40
# Every sync these tests define, by name: scoping is tested on its own below.
SCOPE_ALL = ReceiverSpec(
    "all",
    Provider.GITHUB,
    secret_env="S",
    syncs=(
        "app",
        "https",
        "scp",
        "ssh",
        "staging",
        "other",
        "fork",
        "tag",
        "pinned",
        "live",
        "paused",
        "other-ref",
    ),
)


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("https://github.com/acme/app", "github.com/acme/app"),
        ("https://github.com/acme/app.git", "github.com/acme/app"),
        ("https://GitHub.com/Acme/App.git", "github.com/Acme/App"),
        ("https://github.com/acme/app/", "github.com/acme/app"),
        ("https://github.com/acme/app.git/", "github.com/acme/app"),
        ("https://github.com:443/acme/app.git", "github.com/acme/app"),
        ("http://github.com:80/acme/app", "github.com/acme/app"),
        ("https://x-access-token:ghp_secret@github.com/acme/app.git", "github.com/acme/app"),
        ("http://user:token@Host/org/repo", "host/org/repo"),
        ("ssh://git@github.com/acme/app.git", "github.com/acme/app"),
        ("ssh://git@github.com:22/acme/app.git", "github.com/acme/app"),
        (
            "ssh://git@bitbucket.example.com:7999/acme/app.git",
            "bitbucket.example.com:7999/acme/app",
        ),
        ("git+ssh://git@github.com/acme/app.git", "github.com/acme/app"),
        ("git://github.com/acme/app.git", "github.com/acme/app"),
        ("git://github.com:9418/acme/app", "github.com/acme/app"),
        ("git@github.com:acme/app.git", "github.com/acme/app"),
        ("git@GitHub.com:acme/app", "github.com/acme/app"),
        ("github.com:acme/app.git", "github.com/acme/app"),
        ("git@gitlab.example.com:group/sub/app.git", "gitlab.example.com/group/sub/app"),
        ("  https://github.com/acme/app.git\n", "github.com/acme/app"),
        ("https://[2001:db8::1]:8443/acme/app.git", "[2001:db8::1]:8443/acme/app"),
        ("github.com/acme/app", "github.com/acme/app"),
        ("https://host:notaport/acme/app", "https://host:notaport/acme/app"),
    ],
)
def test_normalise_repository_url(url: str, normal: str) -> None:
    assert normalise_repository_url(url) == normal


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://github.com/acme/app.git", "git@github.com:acme/app.git"),
        ("https://github.com/acme/app", "ssh://git@github.com:22/acme/app.git"),
        (
            "https://gitlab.example.com/platform/deploy-config",
            "git@gitlab.example.com:platform/deploy-config",
        ),
    ],
)
def test_the_same_repository_written_two_ways_is_the_same(a: str, b: str) -> None:
    assert normalise_repository_url(a) == normalise_repository_url(b)


@given(st.text(max_size=200))
def test_normalise_never_raises(url: str) -> None:
    assert isinstance(normalise_repository_url(url), str)


@pytest.mark.parametrize(
    "url",
    [
        "bot:s3cret@git.example.com/acme/app.git",  # no scheme, so no scp-like host: either
        "https:/?bot:s3cret@git.example.com/acme/app",  # found by fuzz.webhook
        "bot:s3cret@git.example.com:acme/app.git",
        "'https://bot:s3cret@git.example.com/acme/app",  # not a URL: no valid scheme
    ],
)
def test_a_password_in_a_url_without_a_scheme_is_never_part_of_its_normal_form(url: str) -> None:
    """The normal form is shown in reasons and log lines (fuzz.webhook found it quoted)."""
    normal = normalise_repository_url(url)
    assert "s3cret" not in normal
    assert normal.startswith("git.example.com")
    event = PushEvent(
        provider="github",
        delivery_id="d-1",
        repository_urls=(url,),
        ref="refs/heads/main",
        before=OLD,
        after=NEW,
    )
    _, reason = matching_syncs(event, [sync("app")], receiver=SCOPE_ALL)
    assert "s3cret" not in reason


def push(ref: str = "refs/heads/main", *, after: str = NEW, deleted: bool = False) -> PushEvent:
    return PushEvent(
        provider="github",
        delivery_id="d-1",
        repository_urls=(
            "https://github.com/acme/app.git",
            "git@github.com:acme/app.git",
            "https://github.com/acme/app",
        ),
        ref=ref,
        before=OLD,
        after=after,
        deleted=deleted,
    )


def sync(
    name: str, url: str = "https://github.com/acme/app", ref: str = "main", *, suspend: bool = False
) -> SyncSpec:
    return SyncSpec(name, GitSourceSpec(url=url, ref=ref), suspend=suspend)


@pytest.mark.parametrize(
    ("ref", "pushed", "expected"),
    [
        ("main", "refs/heads/main", True),
        ("refs/heads/main", "refs/heads/main", True),
        ("main", "refs/heads/maintenance", False),
        ("main", "refs/heads/feature/main", False),
        ("v1.2.0", "refs/tags/v1.2.0", True),
        ("refs/tags/v1.2.0", "refs/tags/v1.2.0", True),
        ("refs/tags/v1.2.0", "refs/heads/v1.2.0", False),
        ("v1.2.0", "refs/tags/v1.2.1", False),
        ("feature/login", "refs/heads/feature/login", True),
        (NEW, "refs/heads/main", False),
        (NEW, f"refs/heads/{NEW}", False),
    ],
)
def test_tracks(ref: str, pushed: str, expected: bool) -> None:
    assert tracks(ref, push(pushed)) is expected


def test_a_push_triggers_every_sync_of_that_repository_and_ref_with_the_pushed_sha() -> None:
    syncs = [
        sync("https"),
        sync("scp", "git@github.com:acme/app.git"),
        sync("ssh", "ssh://git@GITHUB.COM/acme/app"),
        sync("staging", ref="staging"),
        sync("other", "https://github.com/acme/other"),
        sync("fork", "https://github.com/someone/app"),
    ]

    found, reason = matching_syncs(push(), syncs, receiver=SCOPE_ALL)

    assert found == [Push("https", NEW), Push("scp", NEW), Push("ssh", NEW)]
    assert all(p.event == push() for p in found)
    assert reason == ""


def test_a_push_to_an_untracked_branch_names_repository_and_ref() -> None:
    found, reason = matching_syncs(push("refs/heads/feature/x"), [sync("app")], receiver=SCOPE_ALL)

    assert found == []
    assert reason == "no sync tracks github.com/acme/app ref refs/heads/feature/x"


def test_a_push_to_an_unknown_repository_triggers_nothing() -> None:
    found, reason = matching_syncs(
        push(), [sync("app", "https://github.com/acme/other")], receiver=SCOPE_ALL
    )

    assert found == []
    assert reason.startswith("no sync tracks github.com/acme/app")


@pytest.mark.parametrize(("ref", "what"), [("refs/heads/main", "branch"), ("refs/tags/v1", "tag")])
def test_a_deletion_never_triggers(ref: str, what: str) -> None:
    found, reason = matching_syncs(
        push(ref, after=ZERO, deleted=True),
        [sync("app"), sync("tag", ref="v1")],
        receiver=SCOPE_ALL,
    )

    assert found == []
    assert reason == f"{what} deleted: nothing to apply"


def test_a_sync_pinned_to_a_sha_is_never_triggered() -> None:
    found, _ = matching_syncs(push(), [sync("pinned", ref=NEW)], receiver=SCOPE_ALL)

    assert found == []


def test_a_suspended_sync_is_not_triggered_and_the_reason_says_so() -> None:
    found, reason = matching_syncs(
        push(), [sync("app", suspend=True), sync("other-ref", ref="x")], receiver=SCOPE_ALL
    )

    assert found == []
    assert "suspended" in reason
    assert "app" in reason


def test_a_suspended_sync_does_not_hide_an_active_one() -> None:
    found, reason = matching_syncs(
        push(), [sync("paused", suspend=True), sync("live")], receiver=SCOPE_ALL
    )

    assert [p.sync for p in found] == ["live"]
    assert reason == ""


# --- a receiver triggers only the syncs it names ----------------------------------------------


def labelled(name: str, **labels: str) -> SyncSpec:
    return SyncSpec(name, GitSourceSpec(url="https://github.com/acme/app"), labels=labels)


@pytest.mark.parametrize(
    ("receiver", "expected"),
    [
        (ReceiverSpec("r", Provider.GITHUB, syncs=("a",)), ["a"]),
        (ReceiverSpec("r", Provider.GITHUB, syncs=("a", "c")), ["a", "c"]),
        (ReceiverSpec("r", Provider.GITHUB, selector={"team": "shop"}), ["a", "b"]),
        (ReceiverSpec("r", Provider.GITHUB, selector={"team": "shop", "tier": "web"}), ["b"]),
        (ReceiverSpec("r", Provider.GITHUB, syncs=("c",), selector={"tier": "web"}), ["b", "c"]),
        (ReceiverSpec("r", Provider.GITHUB, selector={"team": "other"}), []),
        (ReceiverSpec("r", Provider.GITHUB), []),  # neither: nothing (the config refuses it)
    ],
)
def test_a_receiver_triggers_only_the_syncs_it_names_or_selects(
    receiver: ReceiverSpec, expected: list[str]
) -> None:
    syncs = [
        labelled("a", team="shop"),
        labelled("b", team="shop", tier="web"),
        labelled("c", team="infra"),
    ]

    found, _ = matching_syncs(push(), syncs, receiver=receiver)

    assert [p.sync for p in found] == expected
    assert [s.name for s in syncs if in_scope(receiver, s)] == expected


def test_a_push_only_out_of_scope_syncs_track_says_so_without_naming_them() -> None:
    receiver = ReceiverSpec("r", Provider.GITHUB, syncs=("a",))

    found, reason = matching_syncs(push(), [labelled("secret-sync")], receiver=receiver)

    assert found == []
    assert (
        reason == "no sync receiver 'r' may trigger tracks github.com/acme/app ref refs/heads/main"
    )
    assert "secret-sync" not in reason


# --- a zero `after` is a deletion whatever the flag says ----------------------------------------


@pytest.mark.parametrize("zero", [ZERO, "0" * 64])
def test_a_zero_after_is_a_deletion_even_when_deleted_is_false(zero: str) -> None:
    found, reason = matching_syncs(
        push(after=zero, deleted=False), [sync("app")], receiver=SCOPE_ALL
    )

    assert found == []
    assert reason == "branch deleted: nothing to apply"


# --- repository paths: case-insensitive where the provider is -------------------------------


@pytest.mark.parametrize(
    ("provider", "matches"),
    [
        (Provider.GITHUB, True),
        (Provider.GITLAB, True),
        (Provider.GITEA, True),
        (Provider.FORGEJO, True),
        (Provider.BITBUCKET_SERVER, True),
        (Provider.GENERIC_HMAC, False),
    ],
)
def test_repository_paths_compare_case_insensitively_for_hosted_providers(
    provider: Provider, matches: bool
) -> None:
    event = PushEvent(
        provider=str(provider),
        delivery_id="d-1",
        repository_urls=("https://git.example.com/Acme/Deploy-Config.git",),
        ref="refs/heads/main",
        before=OLD,
        after=NEW,
    )
    receiver = ReceiverSpec("r", provider, syncs=("app",))

    found, _ = matching_syncs(
        event, [sync("app", "git@git.example.com:acme/deploy-config.git")], receiver=receiver
    )

    assert [p.sync for p in found] == (["app"] if matches else [])


def test_generic_hmac_matches_its_exact_case() -> None:
    event = PushEvent(
        provider=str(Provider.GENERIC_HMAC),
        delivery_id="d-1",
        repository_urls=("https://git.example.com/Acme/App.git",),
        ref="refs/heads/main",
        before=OLD,
        after=NEW,
    )
    receiver = ReceiverSpec("r", Provider.GENERIC_HMAC, syncs=("app",))

    found, _ = matching_syncs(
        event, [sync("app", "https://GIT.example.com/Acme/App")], receiver=receiver
    )

    assert [p.sync for p in found] == ["app"]


# --- several pushed refs, one trigger per sync ----------------------------------------------


def test_a_ref_listed_twice_triggers_its_sync_once() -> None:
    again = push(after=OLD)

    found, reasons = triggers_for([push(), again], [sync("app")], receiver=SCOPE_ALL)

    assert [p.sync for p in found] == ["app"]
    assert reasons == []


def test_a_branch_and_a_tag_of_one_name_trigger_a_short_ref_sync_once() -> None:
    found, _ = triggers_for(
        [push("refs/heads/v1"), push("refs/tags/v1")], [sync("app", ref="v1")], receiver=SCOPE_ALL
    )

    assert [p.sync for p in found] == ["app"]
