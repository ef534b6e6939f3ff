"""The receiver over real HTTP on loopback: every status it answers with, for every provider.

Deliveries are the provider fixtures of tests/engine/fixtures/webhooks, signed as the provider
would sign them; ``enqueue`` records what was triggered.
"""

import asyncio
import http.client
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aioreconcile.adapters.webhook.receiving import SecretError, build_app, load_secret
from aioreconcile.engine.config import GitSourceSpec, Provider, ReceiverSpec, SyncSpec
from aioreconcile.engine.triggers import Push
from aioreconcile.engine.webhooks import DeliveryLog, sign, signature_header, verify
from tests.engine.test_webhooks import CASES, SECRET, load, signed, syncs_for

# Every sync the tests below define (a receiver triggers only the syncs it names).
SCOPE = ("app", "release", "pinned", "elsewhere", "https")
RECEIVERS = [ReceiverSpec(str(p), p, secret_env="UNUSED", syncs=SCOPE) for p in Provider] + [
    ReceiverSpec("tiny", Provider.GITHUB, secret_env="UNUSED", max_body_bytes=1024, syncs=SCOPE),
    ReceiverSpec("only-a", Provider.GITHUB, secret_env="UNUSED", syncs=("a",)),
    ReceiverSpec("team-b", Provider.GITHUB, secret_env="UNUSED", selector={"team": "b"}),
]
SECRETS = {spec.name: SECRET for spec in RECEIVERS}
SHA = "59b20b8d5c6ff8d09518454d4dd8b7a30f095ab5"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
APP = SyncSpec("app", GitSourceSpec(url="git@github.com:acme/app.git", ref="main"))


@dataclass
class Harness:
    client: TestClient[web.Request, web.Application]
    syncs: list[SyncSpec] = field(default_factory=lambda: [APP])
    enqueued: list[Push] = field(default_factory=list)
    failing: bool = False

    def enqueue(self, push: Push) -> None:
        if self.failing:
            raise RuntimeError("queue closed")
        self.enqueued.append(push)


@pytest.fixture
async def hooks() -> AsyncIterator[Harness]:
    harness = Harness(client=None)  # type: ignore[arg-type]
    app = build_app(
        RECEIVERS, secrets=SECRETS, syncs=lambda: harness.syncs, enqueue=harness.enqueue
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        harness.client = client
        yield harness


def github_push(ref: str = "refs/heads/main", url: str = "https://github.com/acme/app") -> bytes:
    payload = {
        "ref": ref,
        "before": "0" * 40,
        "after": SHA,
        "repository": {"clone_url": f"{url}.git", "html_url": url},
    }
    return json.dumps(payload).encode()


def github_headers(body: bytes, *, delivery: str = "d-1", event: str = "push") -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": f"sha256={sign(SECRET, body)}",
        "Content-Type": "application/json",
    }


# --- every fixture, over HTTP -------------------------------------------------------------------


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
async def test_fixture_delivery_is_answered_and_triggers_its_syncs(
    hooks: Harness, path: Path
) -> None:
    provider, headers, body, expected = load(path)
    if expected["pushes"]:
        hooks.syncs = syncs_for(expected["pushes"][0]["repository"])

    response = await hooks.client.post(
        f"/hooks/{provider}", data=body, headers=signed(provider, headers, body)
    )
    answer = await response.json()

    triggers = expected.get("triggers", [])
    if expected["kind"] == "ping":
        assert (response.status, answer["status"]) == (200, "pong")
    elif expected["kind"] == "ignored":
        assert (response.status, answer["status"]) == (202, "ignored")
        assert answer["reason"] == expected["reason"]
    elif triggers:
        assert (response.status, answer["status"]) == (202, "accepted")
    else:
        assert (response.status, answer["status"]) == (202, "ignored")
        assert answer["reason"] == expected["match_reason"]
    assert answer["triggered"] == triggers
    assert [p.sync for p in hooks.enqueued] == triggers
    shas = {push["after"] for push in expected["pushes"]}
    assert all(p.sha in shas for p in hooks.enqueued)


# --- one status each ----------------------------------------------------------------------------


async def test_unknown_receiver_is_404(hooks: Harness) -> None:
    body = github_push()
    response = await hooks.client.post("/hooks/nope", data=body, headers=github_headers(body))

    assert response.status == 404
    assert (await response.json())["status"] == "unknown-receiver"
    assert hooks.enqueued == []


@pytest.mark.parametrize("provider", list(Provider))
@pytest.mark.parametrize("signature", ["missing", "wrong"])
async def test_bad_or_missing_signature_is_401_and_triggers_nothing(
    hooks: Harness, provider: Provider, signature: str
) -> None:
    path = next(p for p in CASES if p.stem == f"{provider}-push")
    _, headers, body, _ = load(path)
    hooks.syncs = syncs_for(load(path)[3]["pushes"][0]["repository"])
    if signature == "wrong":
        headers = {**headers, signature_header(provider): "sha256=" + "0" * 64}

    response = await hooks.client.post(f"/hooks/{provider}", data=body, headers=headers)

    assert response.status == 401
    answer = await response.json()
    assert answer["status"] == "unauthorized"
    assert signature_header(provider) in answer["reason"]
    assert hooks.enqueued == []


@pytest.mark.parametrize("provider", list(Provider))
async def test_signed_but_malformed_payload_is_400(hooks: Harness, provider: Provider) -> None:
    path = next(p for p in CASES if p.stem == f"{provider}-push")
    _, headers, _, _ = load(path)
    body = b'{"ref": "refs/heads/main", "after": "not a sha"'

    response = await hooks.client.post(
        f"/hooks/{provider}", data=body, headers=signed(provider, headers, body)
    )

    assert response.status == 400
    assert (await response.json())["status"] == "malformed"
    assert hooks.enqueued == []


@pytest.mark.parametrize("provider", list(Provider))
async def test_replayed_delivery_is_200_duplicate_and_triggers_once(
    hooks: Harness, provider: Provider
) -> None:
    path = next(p for p in CASES if p.stem == f"{provider}-push")
    _, headers, body, expected = load(path)
    hooks.syncs = syncs_for(expected["pushes"][0]["repository"])
    headers = signed(provider, headers, body)

    first = await hooks.client.post(f"/hooks/{provider}", data=body, headers=headers)
    again = await hooks.client.post(f"/hooks/{provider}", data=body, headers=headers)

    assert first.status == 202
    assert again.status == 200
    assert (await again.json())["status"] == "duplicate"
    assert [p.sync for p in hooks.enqueued] == ["app"]


async def test_a_replay_with_a_wrong_signature_is_401_not_duplicate(hooks: Harness) -> None:
    body = github_push()
    await hooks.client.post("/hooks/github", data=body, headers=github_headers(body))
    forged = {**github_headers(body), "X-Hub-Signature-256": "sha256=" + "0" * 64}

    response = await hooks.client.post("/hooks/github", data=body, headers=forged)

    assert response.status == 401
    assert len(hooks.enqueued) == 1


async def test_oversized_body_with_content_length_is_413(hooks: Harness) -> None:
    body = github_push() + b" " * 2000

    response = await hooks.client.post("/hooks/tiny", data=body, headers=github_headers(body))

    assert response.status == 413
    assert (await response.json())["status"] == "too-large"
    assert hooks.enqueued == []


async def test_oversized_chunked_body_is_413(hooks: Harness) -> None:
    body = github_push() + b" " * 2000

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    response = await hooks.client.post("/hooks/tiny", data=chunks(), headers=github_headers(body))

    assert response.status == 413
    assert hooks.enqueued == []


async def test_body_exactly_at_the_cap_is_read(hooks: Harness) -> None:
    body = github_push()
    body += b" " * (1024 - len(body))

    response = await hooks.client.post("/hooks/tiny", data=body, headers=github_headers(body))

    assert response.status == 202
    assert [p.sync for p in hooks.enqueued] == ["app"]


async def test_default_cap_is_five_mib(hooks: Harness) -> None:
    body = github_push() + b" " * (5 * 1024 * 1024)

    response = await hooks.client.post("/hooks/github", data=body, headers=github_headers(body))

    assert response.status == 413


async def test_push_to_an_untracked_branch_is_202_with_the_reason(hooks: Harness) -> None:
    body = github_push("refs/heads/feature/x")

    response = await hooks.client.post("/hooks/github", data=body, headers=github_headers(body))

    assert response.status == 202
    answer = await response.json()
    assert answer == {
        "status": "ignored",
        "reason": "no sync tracks github.com/acme/app ref refs/heads/feature/x",
        "triggered": [],
    }
    assert hooks.enqueued == []


async def test_https_push_matches_a_sync_written_scp_like(hooks: Harness) -> None:
    hooks.syncs = [APP, SyncSpec("https", GitSourceSpec(url="https://GitHub.com/acme/app/"))]
    body = github_push(url="https://github.com/acme/app")

    response = await hooks.client.post("/hooks/github", data=body, headers=github_headers(body))

    assert response.status == 202
    assert (await response.json())["triggered"] == ["app", "https"]
    assert hooks.enqueued == [Push("app", SHA), Push("https", SHA)]


@pytest.mark.parametrize(("receiver", "expected"), [("only-a", ["a"]), ("team-b", ["b"])])
async def test_a_receiver_triggers_only_the_syncs_it_names(
    hooks: Harness, receiver: str, expected: list[str]
) -> None:
    hooks.syncs = [
        SyncSpec("a", APP.source, labels={"team": "a"}),
        SyncSpec("b", APP.source, labels={"team": "b"}),
    ]
    body = github_push()

    response = await hooks.client.post(
        f"/hooks/{receiver}", data=body, headers=github_headers(body)
    )

    assert response.status == 202
    assert (await response.json())["triggered"] == expected
    assert [p.sync for p in hooks.enqueued] == expected


async def test_a_zero_after_is_a_deletion_even_when_the_payload_says_deleted_false(
    hooks: Harness,
) -> None:
    payload = json.loads(github_push())
    payload.update(after="0" * 40, deleted=False)
    body = json.dumps(payload).encode()

    response = await hooks.client.post("/hooks/github", data=body, headers=github_headers(body))

    assert response.status == 202
    assert (await response.json())["reason"] == "branch deleted: nothing to apply"
    assert hooks.enqueued == []


async def test_a_ref_listed_twice_in_one_delivery_triggers_once(hooks: Harness) -> None:
    path = next(p for p in CASES if p.stem == "bitbucket-server-push")
    _, headers, body, expected = load(path)
    hooks.syncs = syncs_for(expected["pushes"][0]["repository"])
    payload = json.loads(body)
    payload["changes"] = [payload["changes"][0], payload["changes"][0]]
    body = json.dumps(payload).encode()

    response = await hooks.client.post(
        "/hooks/bitbucket-server",
        data=body,
        headers=signed(Provider.BITBUCKET_SERVER, headers, body),
    )

    assert (await response.json())["triggered"] == ["app"]
    assert [p.sync for p in hooks.enqueued] == ["app"]


@pytest.mark.parametrize("provider", [p for p in Provider if p is not Provider.GENERIC_HMAC])
async def test_a_hosted_providers_repository_path_matches_whatever_its_case(
    hooks: Harness, provider: Provider
) -> None:
    path = next(p for p in CASES if p.stem == f"{provider}-push")
    _, headers, body, expected = load(path)
    host, _, repository = expected["pushes"][0]["repository"].partition("/")
    hooks.syncs = [SyncSpec("app", GitSourceSpec(url=f"https://{host}/{repository.upper()}"))]

    response = await hooks.client.post(
        f"/hooks/{provider}", data=body, headers=signed(provider, headers, body)
    )

    assert (await response.json())["triggered"] == ["app"]


async def test_generic_hmac_repository_paths_keep_their_case(hooks: Harness) -> None:
    path = next(p for p in CASES if p.stem == "generic-hmac-push")
    _, headers, body, expected = load(path)
    host, _, repository = expected["pushes"][0]["repository"].partition("/")
    hooks.syncs = [SyncSpec("app", GitSourceSpec(url=f"https://{host}/{repository.upper()}"))]

    response = await hooks.client.post(
        "/hooks/generic-hmac", data=body, headers=signed(Provider.GENERIC_HMAC, headers, body)
    )

    assert (await response.json())["triggered"] == []


async def test_a_suspended_sync_is_not_triggered(hooks: Harness) -> None:
    hooks.syncs = [SyncSpec("app", APP.source, suspend=True)]
    body = github_push()

    response = await hooks.client.post("/hooks/github", data=body, headers=github_headers(body))

    assert response.status == 202
    assert "suspended" in (await response.json())["reason"]
    assert hooks.enqueued == []


async def test_traceparent_is_carried_into_the_push_event(hooks: Harness) -> None:
    body = github_push()
    headers = {**github_headers(body), "traceparent": TRACEPARENT}

    await hooks.client.post("/hooks/github", data=body, headers=headers)

    event = hooks.enqueued[0].event
    assert event is not None
    assert event.traceparent == TRACEPARENT
    assert event.delivery_id == "d-1"


async def test_a_malformed_traceparent_is_dropped(hooks: Harness) -> None:
    body = github_push()
    headers = {**github_headers(body), "traceparent": "not-a-trace"}

    await hooks.client.post("/hooks/github", data=body, headers=headers)

    event = hooks.enqueued[0].event
    assert event is not None
    assert event.traceparent is None


async def test_enqueue_failure_is_503_and_the_retry_is_not_a_duplicate(hooks: Harness) -> None:
    body = github_push()
    hooks.failing = True
    failed = await hooks.client.post("/hooks/github", data=body, headers=github_headers(body))
    hooks.failing = False

    retried = await hooks.client.post("/hooks/github", data=body, headers=github_headers(body))

    assert failed.status == 503
    assert retried.status == 202
    assert [p.sync for p in hooks.enqueued] == ["app"]


async def test_only_post_is_served(hooks: Harness) -> None:
    response = await hooks.client.get("/hooks/github")

    assert response.status == 405


async def test_the_duplicate_memory_is_bounded() -> None:
    deliveries = DeliveryLog(capacity=5)
    app = build_app(
        RECEIVERS,
        secrets=SECRETS,
        syncs=lambda: [APP],
        enqueue=lambda _: None,
        deliveries=deliveries,
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for n in range(20):
            body = github_push()
            await client.post(
                "/hooks/github", data=body, headers=github_headers(body, delivery=f"{n}")
            )

    assert len(deliveries) == 5


# --- credentials stay out of logs ---------------------------------------------------------------


async def test_secrets_and_signatures_never_reach_the_logs(
    hooks: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = github_push(url="https://x-access-token:ghp_leaked@github.com/acme/app")
    gitlab = next(p for p in CASES if p.stem == "gitlab-push")
    _, gl_headers, gl_body, _ = load(gitlab)
    near_miss = SECRET.decode()[:-1] + "?"

    await hooks.client.post("/hooks/github", data=body, headers=github_headers(body))
    await hooks.client.post(
        "/hooks/github", data=b"{", headers=github_headers(b"{", delivery="d-2")
    )
    await hooks.client.post(
        "/hooks/gitlab", data=gl_body, headers={**gl_headers, "X-Gitlab-Token": near_miss}
    )
    await hooks.client.post(
        "/hooks/gitlab", data=gl_body, headers=signed(Provider.GITLAB, gl_headers, gl_body)
    )
    await hooks.client.post("/hooks/tiny", data=body + b" " * 2000, headers=github_headers(body))

    logged = "\n".join(
        f"{r.getMessage()} {json.dumps(vars(r), default=str)}" for r in caplog.records
    )
    assert "webhook" in logged
    assert SECRET.decode() not in logged
    assert near_miss not in logged
    assert sign(SECRET, body) not in logged
    assert "ghp_leaked" not in logged
    assert "github.com/acme/app" in logged


# --- secrets ------------------------------------------------------------------------------------


def test_load_secret_from_the_environment() -> None:
    spec = ReceiverSpec("gh", Provider.GITHUB, secret_env="HOOK_SECRET")

    assert load_secret(spec, {"HOOK_SECRET": "s3cret"}) == b"s3cret"


def test_load_secret_from_a_file_drops_one_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"s3cret\n")
    spec = ReceiverSpec("gh", Provider.GITHUB, secret_file=str(tmp_path / "secret"))

    assert load_secret(spec, {}) == b"s3cret"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ReceiverSpec("gh", Provider.GITHUB), "receiver 'gh' has no secret"),
        (ReceiverSpec("gh", Provider.GITHUB, secret_env="NOPE"), "'gh'.*NOPE is empty"),
        (ReceiverSpec("gh", Provider.GITHUB, secret_env="EMPTY"), "'gh'.*EMPTY is empty"),
        (
            ReceiverSpec("gh", Provider.GITHUB, secret_file="/nonexistent/secret"),
            "'gh'.*cannot read.*/nonexistent/secret",
        ),
    ],
)
def test_a_receiver_without_a_secret_is_a_configuration_error(
    spec: ReceiverSpec, message: str
) -> None:
    with pytest.raises(SecretError, match=message):
        load_secret(spec, {"EMPTY": "\n"})


def test_build_app_refuses_a_receiver_without_a_secret() -> None:
    with pytest.raises(SecretError, match="'github'"):
        build_app(RECEIVERS, secrets={}, syncs=list, enqueue=lambda _: None)


# --- fuzz over HTTP -----------------------------------------------------------------------------


@dataclass
class Served:
    port: int
    enqueued: list[Push]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """The app on its own loop in a thread, so a synchronous Hypothesis test can post to it."""
    enqueued: list[Push] = []
    syncs = [APP, *syncs_for("github.com/acme/deploy-config")]
    app = build_app(RECEIVERS, secrets=SECRETS, syncs=lambda: syncs, enqueue=enqueued.append)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield Served(port, enqueued)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


_header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("\u00e9\u00ff"),
    max_size=60,
).map(str.strip)
_FUZZ_HEADER_NAMES = [
    "X-GitHub-Event",
    "X-Gitea-Event",
    "X-Forgejo-Event",
    "X-Gitlab-Event",
    "X-Event-Key",
    "X-Event",
    "X-GitHub-Delivery",
    "X-Request-Id",
    "X-Delivery",
    "traceparent",
    "X-Hub-Signature-256",
    "X-Hub-Signature",
    "X-Gitea-Signature",
    "X-Signature",
    "X-Gitlab-Token",
    "X-Forgejo-Signature",
]
_fuzz_headers = st.dictionaries(
    st.sampled_from(_FUZZ_HEADER_NAMES),
    st.one_of(
        st.sampled_from(["push", "ping", "Push Hook", "repo:refs_changed", "sha256=" + "0" * 64]),
        _header_text,
    ),
    max_size=6,
)
_fuzz_bodies = st.one_of(
    st.binary(max_size=400),
    st.just(github_push()),
    st.sampled_from([load(p)[2] for p in CASES]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    receiver=st.sampled_from([str(p) for p in Provider]),
    headers=_fuzz_headers,
    body=_fuzz_bodies,
    signing=st.booleans(),
)
def test_fuzz_never_a_5xx_and_never_a_trigger_without_a_valid_signature(
    served: Served, receiver: str, headers: dict[str, str], body: bytes, signing: bool
) -> None:
    provider = Provider(receiver)
    if signing:
        headers = signed(provider, headers, body)
    before = len(served.enqueued)
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        connection.request("POST", f"/hooks/{receiver}", body=body, headers=headers)
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()

    assert response.status < 500
    assert set(answer) == {"status", "reason", "triggered"}
    if not verify(provider, headers, body, SECRET):
        assert response.status == 401
        assert len(served.enqueued) == before
    assert len(served.enqueued) - before == len(answer["triggered"])
