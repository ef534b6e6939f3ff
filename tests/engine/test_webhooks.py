"""Webhook deliveries as data: signatures, each provider's payload -> PushEvent, duplicates.

Every provider case is a JSON fixture in fixtures/webhooks/<provider>-<case>.json holding the
headers and body the provider documents, and what the delivery must mean: its kind, the pushes
it carries and which of the syncs below it triggers.
"""

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aioreconcile.engine.config import GitSourceSpec, Provider, ReceiverSpec, SyncSpec
from aioreconcile.engine.matching import matching_syncs, normalise_repository_url
from aioreconcile.engine.webhooks import (
    DeliveryKind,
    DeliveryLog,
    WebhookError,
    parse,
    sign,
    signature_header,
    verify,
)

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
CASES = sorted(FIXTURES.glob("*.json"))
SECRET = b"It's a Secret to Everybody"
SHA = "59b20b8d5c6ff8d09518454d4dd8b7a30f095ab5"


def load(path: Path) -> tuple[Provider, dict[str, str], bytes, dict[str, Any]]:
    case = json.loads(path.read_text())
    body = json.dumps(case["payload"]).encode()
    return Provider(case["provider"]), case["headers"], body, case["expected"]


def signed(provider: Provider, headers: dict[str, str], body: bytes) -> dict[str, str]:
    """The headers plus the signature the provider would send for ``SECRET``."""
    value = {
        Provider.GITHUB: f"sha256={sign(SECRET, body)}",
        Provider.BITBUCKET_SERVER: f"sha256={sign(SECRET, body)}",
        Provider.GENERIC_HMAC: f"sha256={sign(SECRET, body)}",
        Provider.GITEA: sign(SECRET, body),
        Provider.FORGEJO: sign(SECRET, body),
        Provider.GITLAB: SECRET.decode(),
    }[provider]
    return {**headers, signature_header(provider): value}


def _the_repository(urls: tuple[str, ...]) -> str:
    """Every URL a provider gives for one repository names the same ``host/path``; a Bitbucket
    Server SSH URL carries its port and no ``scm/``, so it is compared from the http one."""
    names = {normalise_repository_url(url) for url in urls}
    plain = {name for name in names if ":" not in name.partition("/")[0]}
    assert len(plain) == 1, names
    return plain.pop()


# Scoped to every sync ``syncs_for`` defines (scoping itself: tests/engine/test_matching.py).
RECEIVER = ReceiverSpec("hooks", Provider.GITHUB, syncs=("app", "release", "pinned", "elsewhere"))


def syncs_for(repository: str) -> list[SyncSpec]:
    """The same repository written two ways: https for ``app``, scp-like for ``release``."""
    host, _, path = repository.partition("/")
    return [
        SyncSpec("app", GitSourceSpec(url=f"https://{host.upper()}/{path}.git", ref="main")),
        SyncSpec("release", GitSourceSpec(url=f"git@{host}:{path}.git", ref="v1.2.0")),
        SyncSpec("pinned", GitSourceSpec(url=f"https://{host}/{path}", ref=SHA)),
        SyncSpec("elsewhere", GitSourceSpec(url="https://example.org/other/repo", ref="main")),
    ]


# --- fixtures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_fixture_parses_to_its_expected_delivery(path: Path) -> None:
    provider, headers, body, expected = load(path)

    delivery = parse(provider, headers, body)

    assert delivery.kind is DeliveryKind(expected["kind"])
    assert delivery.delivery_id == expected["delivery_id"]
    assert delivery.event == expected["event"]
    assert delivery.reason == expected["reason"]
    got = [
        {
            "repository": _the_repository(push.repository_urls),
            "ref": push.ref,
            "before": push.before,
            "after": push.after,
            "created": push.created,
            "deleted": push.deleted,
            "forced": push.forced,
            "commits": [c.sha for c in push.commits],
        }
        for push in delivery.pushes
    ]
    assert got == expected["pushes"]
    assert all(push.provider == provider for push in delivery.pushes)
    assert all(push.delivery_id == delivery.delivery_id for push in delivery.pushes)


@pytest.mark.parametrize("provider", [Provider.GITHUB, Provider.GITEA, Provider.GENERIC_HMAC])
@pytest.mark.parametrize("zero", ["0" * 40, "0" * 64])
def test_a_zero_after_parses_as_a_deletion_whatever_the_deleted_flag_says(
    provider: Provider, zero: str
) -> None:
    _, headers, body, _ = load(FIXTURES / f"{provider}-push.json")
    payload = json.loads(body)
    payload.update(after=zero, deleted=False)

    delivery = parse(provider, headers, json.dumps(payload).encode())

    assert [push.deleted for push in delivery.pushes] == [True]


@pytest.mark.parametrize(
    "path",
    [p for p in CASES if "triggers" in json.loads(p.read_text())["expected"]],
    ids=lambda p: p.stem,
)
def test_fixture_push_triggers_the_syncs_tracking_its_repository_and_ref(path: Path) -> None:
    provider, headers, body, expected = load(path)
    delivery = parse(provider, headers, body)
    syncs = syncs_for(expected["pushes"][0]["repository"])

    triggered: list[tuple[str, str]] = []
    reasons: list[str] = []
    for push in delivery.pushes:
        found, reason = matching_syncs(push, syncs, receiver=RECEIVER)
        triggered += [(p.sync, p.sha) for p in found]
        reasons += [reason] if reason else []

    assert [name for name, _ in triggered] == expected["triggers"]
    assert {sha for _, sha in triggered} <= {push.after for push in delivery.pushes}
    if expected["match_reason"]:
        assert reasons == [expected["match_reason"]]


def test_fixtures_cover_every_provider_and_case() -> None:
    names = {p.stem for p in CASES}
    for provider in Provider:
        for case in ("push", "tag-push", "branch-deletion", "force-push"):
            assert f"{provider}-{case}" in names
    for provider in (Provider.GITHUB, Provider.BITBUCKET_SERVER, Provider.GENERIC_HMAC):
        assert f"{provider}-ping" in names


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_fixture_signed_with_the_secret_verifies(path: Path) -> None:
    provider, headers, body, _ = load(path)

    assert verify(provider, signed(provider, headers, body), body, SECRET)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_fixture_signed_with_another_secret_or_unsigned_is_refused(path: Path) -> None:
    provider, headers, body, _ = load(path)

    assert not verify(provider, headers, body, SECRET)
    assert not verify(provider, signed(provider, headers, body), body, SECRET + b"!")
    if provider is not Provider.GITLAB:  # GitLab sends a token; it signs no body
        assert not verify(provider, signed(provider, headers, body), body + b" ", SECRET)


# --- signatures ---------------------------------------------------------------------------------

BODY = b'{"ref": "refs/heads/main"}'
DIGEST = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("provider", "headers", "accepted"),
    [
        (Provider.GITHUB, {"X-Hub-Signature-256": f"sha256={DIGEST}"}, True),
        (Provider.GITHUB, {"x-hub-signature-256": f"sha256={DIGEST}"}, True),
        (Provider.GITHUB, {"X-Hub-Signature-256": f"SHA256={DIGEST.upper()}"}, True),
        (Provider.GITHUB, {"X-Hub-Signature-256": DIGEST}, False),
        (Provider.GITHUB, {"X-Hub-Signature-256": f"sha1={DIGEST}"}, False),
        (Provider.GITHUB, {"X-Hub-Signature": f"sha256={DIGEST}"}, False),
        (Provider.GITHUB, {"X-Hub-Signature-256": "sha256="}, False),
        (Provider.GITHUB, {"X-Hub-Signature-256": f"sha256={DIGEST[:-1]}"}, False),
        (Provider.GITHUB, {}, False),
        (Provider.GITEA, {"X-Gitea-Signature": DIGEST}, True),
        (Provider.GITEA, {"X-Gitea-Signature": f"sha256={DIGEST}"}, False),
        (Provider.GITEA, {"X-Hub-Signature-256": f"sha256={DIGEST}"}, False),
        (Provider.FORGEJO, {"X-Forgejo-Signature": DIGEST}, True),
        (Provider.FORGEJO, {"X-Gitea-Signature": DIGEST}, True),
        (Provider.FORGEJO, {"X-Forgejo-Signature": "0" * 64}, False),
        (Provider.BITBUCKET_SERVER, {"X-Hub-Signature": f"sha256={DIGEST}"}, True),
        (Provider.BITBUCKET_SERVER, {"X-Hub-Signature": DIGEST}, False),
        (Provider.GENERIC_HMAC, {"X-Signature": f"sha256={DIGEST}"}, True),
        (Provider.GENERIC_HMAC, {"X-Signature": f"sha512={DIGEST}"}, False),
        (Provider.GITLAB, {"X-Gitlab-Token": SECRET.decode()}, True),
        (Provider.GITLAB, {"X-Gitlab-Token": SECRET.decode()[:-1]}, False),
        (Provider.GITLAB, {"X-Gitlab-Token": DIGEST}, False),
        (Provider.GITLAB, {"X-Gitlab-Token": ""}, False),
        (Provider.GITLAB, {"X-Gitlab-Token": "caf\u00e9 \ud800"}, False),
        (Provider.GITHUB, {"X-Hub-Signature-256": "sha256=\u00e9\u00e9"}, False),
    ],
)
def test_signature_table(provider: Provider, headers: dict[str, str], accepted: bool) -> None:
    assert verify(provider, headers, BODY, SECRET) is accepted


@pytest.mark.parametrize("provider", list(Provider))
def test_an_empty_secret_verifies_nothing(provider: Provider) -> None:
    headers = {
        "X-Hub-Signature-256": f"sha256={sign(b'', BODY)}",
        "X-Hub-Signature": f"sha256={sign(b'', BODY)}",
        "X-Signature": f"sha256={sign(b'', BODY)}",
        "X-Gitea-Signature": sign(b"", BODY),
        "X-Forgejo-Signature": sign(b"", BODY),
        "X-Gitlab-Token": "",
    }
    assert not verify(provider, headers, BODY, b"")


# --- parse errors -------------------------------------------------------------------------------

PUSH = {
    "ref": "refs/heads/main",
    "before": "0" * 40,
    "after": SHA,
    "repository": {"clone_url": "https://github.com/acme/app.git"},
}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({**PUSH, "after": "HEAD"}).encode(), "'after'"),
        (json.dumps({**PUSH, "after": "--upload-pack=touch /tmp/x"}).encode(), "'after'"),
        (json.dumps({**PUSH, "ref": "main"}).encode(), "'ref'"),
        (json.dumps({**PUSH, "ref": "refs/heads/a b"}).encode(), "'ref'"),
        (json.dumps({**PUSH, "ref": "refs/heads/../x"}).encode(), "'ref'"),
        (json.dumps({**PUSH, "repository": {}}).encode(), "no repository URL"),
        (json.dumps({**PUSH, "repository": "x"}).encode(), "'repository'"),
        (json.dumps({**PUSH, "forced": "yes"}).encode(), "'forced'"),
    ],
)
def test_malformed_github_push_is_a_webhook_error_that_does_not_echo_the_body(
    body: bytes, message: str
) -> None:
    with pytest.raises(WebhookError, match=message) as caught:
        parse(Provider.GITHUB, {"X-GitHub-Event": "push"}, body)

    assert "upload-pack" not in str(caught.value)
    assert len(str(caught.value)) < 100


@pytest.mark.parametrize(
    ("provider", "headers"),
    [
        (Provider.GITHUB, {}),
        (Provider.GITEA, {}),
        (Provider.GITLAB, {}),
        (Provider.BITBUCKET_SERVER, {}),
    ],
)
def test_a_delivery_without_its_event_header_is_malformed(
    provider: Provider, headers: dict[str, str]
) -> None:
    with pytest.raises(WebhookError, match="Event"):
        parse(provider, headers, json.dumps(PUSH).encode())


def test_without_a_delivery_id_the_body_digest_identifies_the_delivery() -> None:
    body = json.dumps(PUSH).encode()

    first = parse(Provider.GITHUB, {"X-GitHub-Event": "push"}, body)
    again = parse(Provider.GITHUB, {"X-GitHub-Event": "push"}, body)

    assert first.delivery_id == again.delivery_id == "sha256:" + hashlib.sha256(body).hexdigest()


def test_a_huge_delivery_id_is_kept_short() -> None:
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "x" * 8000}

    delivery = parse(Provider.GITHUB, headers, json.dumps(PUSH).encode())

    assert len(delivery.delivery_id) < 80


def test_an_unknown_event_name_is_quoted_short_in_the_reason() -> None:
    delivery = parse(Provider.GITHUB, {"X-GitHub-Event": "e" * 5000}, b"")

    assert delivery.kind is DeliveryKind.IGNORED
    assert len(delivery.reason) < 100


def test_a_gitlab_system_hook_for_a_push_is_a_push() -> None:
    payload = {**PUSH, "object_kind": "push", "project": {"git_http_url": "https://gl/a/b.git"}}
    del payload["repository"]

    delivery = parse(
        Provider.GITLAB, {"X-Gitlab-Event": "System Hook"}, json.dumps(payload).encode()
    )

    assert delivery.kind is DeliveryKind.PUSH
    assert delivery.pushes[0].repository_urls == ("https://gl/a/b.git",)


def test_a_gitlab_system_hook_for_something_else_is_ignored() -> None:
    body = json.dumps({"object_kind": "repository_update", "event_name": "repository_update"})

    delivery = parse(Provider.GITLAB, {"X-Gitlab-Event": "System Hook"}, body.encode())

    assert delivery.kind is DeliveryKind.IGNORED


# --- duplicates ---------------------------------------------------------------------------------


def test_delivery_log_answers_seen_for_a_repeat_per_receiver() -> None:
    log = DeliveryLog()

    assert not log.seen("github", "d-1")
    assert log.seen("github", "d-1")
    assert not log.seen("gitlab", "d-1")


def test_delivery_log_is_bounded_and_forgets_the_least_recently_seen() -> None:
    log = DeliveryLog(capacity=3)
    for delivery in ("a", "b", "c"):
        log.seen("r", delivery)
    log.seen("r", "a")  # touched: now the most recent

    log.seen("r", "d")

    assert len(log) == 3
    assert log.seen("r", "a")
    assert not log.seen("r", "b")


def test_delivery_log_forgets_on_request() -> None:
    log = DeliveryLog()
    log.seen("r", "a")

    log.forget("r", "a")

    assert not log.seen("r", "a")


# --- fuzz ---------------------------------------------------------------------------------------

_header_names = st.sampled_from(
    [
        "X-GitHub-Event",
        "X-GitHub-Delivery",
        "X-Hub-Signature-256",
        "X-Hub-Signature",
        "X-Gitea-Event",
        "X-Gitea-Signature",
        "X-Forgejo-Event",
        "X-Forgejo-Signature",
        "X-Gitlab-Event",
        "X-Gitlab-Token",
        "X-Event-Key",
        "X-Request-Id",
        "X-Signature",
        "X-Event",
        "X-Delivery",
    ]
)
_header_values = st.one_of(
    st.sampled_from(["push", "ping", "Push Hook", "Tag Push Hook", "System Hook"]),
    st.sampled_from(["repo:refs_changed", "diagnostics:ping", "sha256=", "sha256=00"]),
    st.text(max_size=80),
)
_PAYLOAD_KEYS = [
    "ref",
    "before",
    "after",
    "repository",
    "clone_url",
    "changes",
    "refId",
    "toHash",
    "fromHash",
    "links",
    "clone",
    "href",
    "project",
    "object_kind",
    "commits",
    "id",
]
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=50) | st.just(SHA),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(_PAYLOAD_KEYS),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)
_bodies = st.one_of(
    st.binary(max_size=300),
    _json_values.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries(
        {"ref": st.text(max_size=30), "after": st.just(SHA), "before": st.just("0" * 40)},
        optional={"repository": _json_values, "changes": _json_values, "project": _json_values},
    ).map(lambda value: json.dumps(value).encode()),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    provider=st.sampled_from(list(Provider)),
    headers=st.dictionaries(_header_names, _header_values, max_size=5),
    body=_bodies,
    secret=st.binary(min_size=1, max_size=32),
)
def test_fuzz_wrong_secret_never_verifies_and_parse_raises_only_webhook_error(
    provider: Provider, headers: dict[str, str], body: bytes, secret: bytes
) -> None:
    signed_headers = {
        **headers,
        signature_header(provider): (
            secret.decode("latin-1")
            if provider is Provider.GITLAB
            else ("" if provider in (Provider.GITEA, Provider.FORGEJO) else "sha256=")
            + sign(secret, body)
        ),
    }
    assert not verify(provider, signed_headers, body, secret + b"x")
    assert not verify(provider, headers, body, secret) or signature_header(provider) in headers

    try:
        delivery = parse(provider, headers, body)
    except WebhookError as e:
        message = str(e)
    else:
        message = ""
        assert all(push.ref.startswith("refs/") for push in delivery.pushes)
        assert (delivery.kind is DeliveryKind.PUSH) == bool(delivery.pushes)
    assert len(message) < 120


@pytest.mark.parametrize(
    ("provider", "headers", "body"),
    [
        (Provider.GITHUB, {"X-GitHub-Event": "https://bot:s3cret@git.example.com/x"}, b"{}"),
        (
            Provider.GITLAB,
            {"X-Gitlab-Event": "System Hook"},
            b'{"object_kind": "https://bot:s3cret@git.example.com/x"}',
        ),
    ],
)
def test_an_ignored_event_name_is_quoted_without_a_credential(
    provider: Provider, headers: dict[str, str], body: bytes
) -> None:
    """Found by fuzz.webhook: the reason (answered and logged) quoted the event as sent."""
    delivery = parse(provider, signed(provider, headers, body), body)
    assert delivery.kind is DeliveryKind.IGNORED
    assert "s3cret" not in delivery.reason
    assert "s3cret" not in delivery.event
    assert "git.example.com" in delivery.reason


@pytest.mark.parametrize("event", ["Push Hook", "System Hook"])
@pytest.mark.parametrize("kind", [{"name": "push"}, ["push"]])
def test_a_gitlab_object_kind_that_is_not_a_string_is_malformed_or_ignored(
    event: str, kind: object
) -> None:
    """Found by fuzz.webhook: an object or list as ``object_kind`` raised TypeError
    (unhashable), which the receiver answered 500 instead of 400."""
    body = json.dumps({"object_kind": kind}).encode()
    headers = signed(Provider.GITLAB, {"X-Gitlab-Event": event}, body)
    if event == "System Hook":
        delivery = parse(Provider.GITLAB, headers, body)
        assert delivery.kind is DeliveryKind.IGNORED
        assert f"System Hook/'{type(kind).__name__}'" in delivery.reason
    else:
        with pytest.raises(WebhookError, match="without object_kind push or tag_push"):
            parse(Provider.GITLAB, headers, body)
