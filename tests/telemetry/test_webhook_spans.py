"""The webhook request is a SERVER span of its own, with HTTP's semantic-convention attributes
(never a header or the body). The reconcile it triggers is its CONSUMER child when the sender
gave a trace to continue (a CI pipeline); otherwise a CONSUMER root of its own trace, linked to
the request, so Jaeger lists a push as ``reconcile <sync>``: over real HTTP on loopback, spans in
an in-memory exporter."""

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aioreconcile.adapters.telemetry.correlating import TraceContextFilter
from aioreconcile.adapters.telemetry.tracing import OtelTracing
from aioreconcile.adapters.webhook.receiving import build_app
from aioreconcile.engine.triggers import Push
from aioreconcile.reactor.tracing import CommitInfo
from tests.engine.test_webhooks import SECRET
from tests.webhook.test_receiving import (
    APP,
    RECEIVERS,
    SECRETS,
    SHA,
    TRACEPARENT,
    github_headers,
    github_push,
)

USER_AGENT = "GitHub-Hookshot/5a3b7c1"


@dataclass
class Traced:
    client: TestClient[web.Request, web.Application]
    tracing: OtelTracing
    exporter: InMemorySpanExporter
    enqueued: list[Push] = field(default_factory=list)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def reconcile(self, push: Push) -> None:
        """What the controller does with a push: the commit's root, with the two trace facts
        the receiver put on the push event (the parent, the link)."""
        assert push.event is not None
        with self.tracing.commit(
            CommitInfo(
                sync="app",
                repository_url=APP.source.url,
                ref="main",
                ref_type="branch",
                sha=SHA,
                trigger="push",
                parent_traceparent=push.event.traceparent,
                link_traceparent=push.event.link_traceparent,
            )
        ):
            pass


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    made = TracerProvider(shutdown_on_exit=False)
    made.add_span_processor(SimpleSpanProcessor(exporter))
    yield made, exporter
    made.shutdown()


@pytest.fixture
async def traced(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> AsyncIterator[Traced]:
    tracer_provider, exporter = provider
    tracing = OtelTracing(tracer_provider)
    enqueued: list[Push] = []
    app = build_app(
        RECEIVERS, secrets=SECRETS, syncs=lambda: [APP], enqueue=enqueued.append, tracing=tracing
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Traced(client, tracing, exporter, enqueued)


async def test_with_a_senders_traceparent_the_reconcile_is_the_requests_consumer_child(
    traced: Traced,
) -> None:
    body = github_push()
    headers = {**github_headers(body), "traceparent": TRACEPARENT, "User-Agent": USER_AGENT}

    response = await traced.client.post("/hooks/github", data=body, headers=headers)
    assert response.status == 202
    (push,) = traced.enqueued
    traced.reconcile(push)

    request, reconcile = traced.spans()
    assert request.name == "POST /hooks/{name}"
    assert request.kind is SpanKind.SERVER
    assert dict(request.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": "/hooks/{name}",
        "url.path": "/hooks/github",
        "url.scheme": "http",
        "user_agent.original": USER_AGENT,
        "aioreconcile.receiver": "github",
        "aioreconcile.webhook.triggered": ("app",),
        "http.response.status_code": 202,
    }
    assert request.status.status_code is StatusCode.UNSET
    # The request continues the sender's trace; the reconcile continues the request.
    assert request.context is not None
    assert reconcile.context is not None
    assert request.parent is not None
    assert f"{request.parent.span_id:016x}" == TRACEPARENT.split("-")[2]
    assert request.context.trace_id == int(TRACEPARENT.split("-")[1], 16)
    assert reconcile.kind is SpanKind.CONSUMER
    assert reconcile.parent is not None
    assert reconcile.parent.span_id == request.context.span_id
    assert reconcile.context.trace_id == request.context.trace_id
    assert list(reconcile.links) == []  # its parent already says where it came from
    assert reconcile.attributes is not None
    assert "aioreconcile.webhook.trace_id" not in reconcile.attributes
    # Neither the signature, the secret nor the body reach the span.
    exported = request.to_json()
    assert headers["X-Hub-Signature-256"] not in exported
    assert SECRET.decode() not in exported
    assert "clone_url" not in exported


@pytest.mark.parametrize(
    "sender",
    [
        None,  # GitHub, GitLab, Gitea, Bitbucket: no traceparent ever
        "not-a-trace",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # well-formed, invalid id
    ],
)
async def test_without_a_senders_trace_the_reconcile_is_a_root_linked_to_the_request(
    traced: Traced, sender: str | None
) -> None:
    """Jaeger lists a trace by its root: a push must read ``reconcile app`` there, with its
    SHA, not ``POST /hooks/{name}`` like every other push."""
    body = github_push()
    headers = {**github_headers(body), **({"traceparent": sender} if sender else {})}

    response = await traced.client.post("/hooks/github", data=body, headers=headers)
    assert response.status == 202
    (push,) = traced.enqueued
    traced.reconcile(push)

    request, reconcile = traced.spans()
    assert request.name == "POST /hooks/{name}"
    assert request.kind is SpanKind.SERVER
    assert request.parent is None
    assert reconcile.name == "reconcile app"
    assert reconcile.kind is SpanKind.CONSUMER
    assert reconcile.parent is None
    assert request.context is not None
    assert reconcile.context is not None
    assert reconcile.context.trace_id != request.context.trace_id
    (link,) = reconcile.links
    assert link.context.trace_id == request.context.trace_id
    assert link.context.span_id == request.context.span_id
    assert reconcile.attributes is not None
    assert reconcile.attributes["aioreconcile.webhook.trace_id"] == (
        f"{request.context.trace_id:032x}"
    )
    # Still the first attributes sent: the short SHA and the trigger.
    first_two = list(reconcile.attributes)[:2]
    assert first_two == ["aioreconcile.commit.short_sha", "aioreconcile.trigger"]


async def test_an_unknown_path_is_redacted_and_a_4xx_is_no_error(traced: Traced) -> None:
    body = github_push()
    unknown = await traced.client.post(
        "/hooks/a-guessed-secret-path", data=body, headers=github_headers(body)
    )
    unsigned = await traced.client.post("/hooks/github", data=body)

    assert (unknown.status, unsigned.status) == (404, 401)
    first, second = traced.spans()
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["url.path"] == "/hooks/REDACTED"
    assert first.attributes["http.response.status_code"] == 404
    assert "a-guessed-secret-path" not in first.to_json()
    assert second.attributes["http.response.status_code"] == 401
    assert {s.status.status_code for s in (first, second)} == {StatusCode.UNSET}
    assert traced.enqueued == []


async def test_without_tracing_the_senders_context_still_reaches_the_push(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    enqueued: list[Push] = []
    app = build_app(RECEIVERS, secrets=SECRETS, syncs=lambda: [APP], enqueue=enqueued.append)
    body = github_push()
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        await client.post(
            "/hooks/github", data=body, headers={**github_headers(body), "traceparent": TRACEPARENT}
        )

    (push,) = enqueued
    assert push.event is not None
    assert push.event.traceparent == TRACEPARENT
    assert provider[1].get_finished_spans() == ()


async def test_the_webhook_log_line_carries_the_requests_trace(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(TraceContextFilter())
    body = github_push()
    with caplog.at_level(logging.INFO, logger="aioreconcile.adapters.webhook"):
        await traced.client.post("/hooks/github", data=body, headers=github_headers(body))

    (request,) = traced.spans()
    assert request.context is not None
    (line,) = [r for r in caplog.records if r.getMessage().startswith("webhook push")]
    assert getattr(line, "trace_id", None) == f"{request.context.trace_id:032x}"
