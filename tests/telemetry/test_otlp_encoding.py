"""Our OTLP span encoder against the official one: the same spans, decoded with the official
``ExportTraceServiceRequest``, must be the same message, for every shape of span we export."""

import time

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator

from aioreconcile.adapters.telemetry.otlp import (
    EncodedObjectSpans,
    FastOTLPSpanExporter,
    PreEncoder,
    SpanEncoder,
)
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


class _Sequential(IdGenerator):
    """The same ids in the same order on every provider: two paths' spans can be compared."""

    def __init__(self) -> None:
        self._next = 0x1000

    def generate_span_id(self) -> int:
        self._next += 1
        return self._next

    def generate_trace_id(self) -> int:
        return 0x0AF7651916CD43DD8448EB211C80319C


class _Collect(SpanProcessor):
    def __init__(self) -> None:
        self.ended: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)


def _object_entries(began: float) -> list[ChangeSetEntry]:
    kinds = [
        ("", "ConfigMap", Action.CONFIGURED, "shop"),
        ("apps", "Deployment", Action.CREATED, "shop"),
        ("", "Service", Action.FAILED, "shop"),  # a failure between two encoded runs
        ("", "Namespace", Action.UNCHANGED, ""),
        ("example.com", "Widget", Action.DELETED, "shop"),
    ]
    return [
        ChangeSetEntry(
            ObjectRef(group, kind, namespace, f"object-{i}-ü", "v1"),
            action,
            error="admission webhook denied it" if action is Action.FAILED else None,
            duration_s=0.001 * i,
            resource_version_before=None if i % 2 else str(100 + i),
            resource_version_after=None if action is Action.DELETED else str(200 + i),
            started_at=None if i == 3 else began + i / 1e3,
        )
        for i, (group, kind, action, namespace) in enumerate(kinds)
    ]


def _info(parent: str) -> CommitInfo:
    return CommitInfo(
        sync="shop",
        repository_url="https://git.example.com/acme/deploy.git",
        ref="main",
        ref_type="branch",
        sha=SHA,
        trigger="push",
        parent_traceparent=parent,
        started_at=1_700_000_000.0,
    )


def _object_span_request(*, pre_encoded: bool, operation: str) -> bytes:
    """One commit's object spans, as the SDK makes them (``start_span``, encoded by the
    official encoder) or as ``start_tracing`` makes them (encoded on the event loop)."""
    resource = Resource.create({"service.name": "shop-ctl"})
    provider = TracerProvider(resource=resource, id_generator=_Sequential(), shutdown_on_exit=False)
    collect = _Collect()
    provider.add_span_processor(collect)
    encoder = PreEncoder(resource, provider.id_generator.generate_span_id)
    tracing = (
        OtelTracing(provider, span_processor=collect, encode_objects=encoder)
        if pre_encoded
        else OtelTracing(provider)
    )
    with tracing.commit(_info(REMOTE)), tracing.stage("apply"):
        tracing.objects(_object_entries(1_700_000_000.25), operation=operation)
    objects = [s for s in collect.ended if s.name not in ("apply", "reconcile shop")]
    if pre_encoded:
        assert any(isinstance(s, EncodedObjectSpans) for s in objects)
        return SpanEncoder().request(objects)
    encoded: bytes = encode_spans(objects).SerializeToString()
    return encoded


@pytest.mark.parametrize("operation", ["apply", "prune"])
def test_object_spans_encoded_on_the_event_loop_are_what_the_sdk_would_export(
    operation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same ids, names, times, attributes (in order), status and exception event (the
    failed object between two encoded runs keeps its place) as the SDK's own spans."""
    now = time.time_ns()
    monkeypatch.setattr(time, "time_ns", lambda: now)  # an entry without times ends "now"
    ours = ExportTraceServiceRequest.FromString(
        _object_span_request(pre_encoded=True, operation=operation)
    )
    official = ExportTraceServiceRequest.FromString(
        _object_span_request(pre_encoded=False, operation=operation)
    )
    assert len(official.resource_spans[0].scope_spans[0].spans) == 5
    assert ours == official
