"""Our OTLP span encoder against the official one: the same spans, decoded with the official
``ExportTraceServiceRequest``, must be the same message, for every shape of span we export."""

import time

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aioreconcile.adapters.telemetry.otlp import FastOTLPSpanExporter, SpanEncoder
from aioreconcile.adapters.telemetry.tracing import OtelTracing
from aioreconcile.engine.changeset import Action, ChangeSetEntry
from aioreconcile.engine.model import ObjectRef
from aioreconcile.reactor.tracing import CommitInfo

SHA = "3f2a9c0d5e7b41a8a1c2d3e4f5061728394a5b6c"
REMOTE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _spans(scenario: str) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "shop-ctl", "deployment.environment": "prod"}),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OtelTracing(provider)
    began = time.time()
    info = CommitInfo(
        sync="shop",
        repository_url="https://git.example.com/acme/deploy.git",
        ref="main",
        ref_type="branch",
        sha=SHA,
        author="Ada Lovelace <ada@example.com>",
        subject="Scale web to 3 — ünïcode",
        trigger="push",
        parent_traceparent=REMOTE if scenario == "continued" else None,
        link_traceparent=REMOTE if scenario == "linked" else None,
        started_at=began,
    )
    entries = [
        ChangeSetEntry(
            ObjectRef(group, kind, "shop", f"object-{i}", "v1"),
            action,
            error="admission webhook denied it" if action is Action.FAILED else None,
            duration_s=0.001 * i,
            resource_version_before=None if i % 2 else str(100 + i),
            resource_version_after=str(200 + i),
            started_at=began + i / 1e3,
        )
        for i, (group, kind, action) in enumerate(
            [
                ("", "ConfigMap", Action.CONFIGURED),
                ("apps", "Deployment", Action.CREATED),
                ("", "Service", Action.FAILED),
                ("example.com", "Widget", Action.UNCHANGED),
            ]
        )
    ]
    if scenario == "heal":
        with tracing.heal(
            sync="shop",
            ref=entries[1].ref,
            revision=SHA,
            repository_url=info.repository_url,
            link_traceparent=REMOTE,
            writers=["kubectl-edit"],
            fields=["spec.replicas"],
        ) as span:
            span.set_attributes({"aioreconcile.heal.ms": 12.5, "aioreconcile.retries": -3})
    else:
        with tracing.commit(info), tracing.stage("fetch", {"aioreconcile.objects": 4}) as stage:
            stage.set_attributes(
                {
                    "aioreconcile.dry_run": False,
                    "aioreconcile.paths": ["a", "b"],
                    # Longer than a one-byte length (127): the varint path of a string value.
                    "aioreconcile.error": "denied: " + "é" * 200,
                }
            )
            tracing.objects(entries, operation="apply")
            stage.record_error("1 object(s) failed", error=RuntimeError("boom"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


@pytest.mark.parametrize("scenario", ["linked", "continued", "heal"])
def test_our_encoding_decodes_to_what_the_official_encoder_makes(scenario: str) -> None:
    spans = _spans(scenario)
    assert spans
    ours = ExportTraceServiceRequest.FromString(SpanEncoder().request(spans))
    assert ours == encode_spans(spans)


def test_the_encoder_caches_do_not_change_a_second_batch() -> None:
    encoder = SpanEncoder()
    first, second = _spans("linked"), _spans("linked")
    encoder.request(first)
    assert ExportTraceServiceRequest.FromString(encoder.request(second)) == encode_spans(second)


def test_the_exporter_sends_with_its_own_http_client() -> None:
    """Guards the private names the fast path uses: with this exporter version it is taken."""
    exporter = FastOTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    try:
        assert exporter._fast
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]
