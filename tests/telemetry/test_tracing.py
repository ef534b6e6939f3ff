"""The OTel adapter of the tracing port, against an in-memory exporter on a private provider."""

import logging
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aioreconcile.adapters.telemetry.correlating import TraceContextFilter, install_log_correlation
from aioreconcile.adapters.telemetry.setup import (
    TraceFlusher,
    TracingConfigError,
    TracingSettings,
    start_tracing,
)
from aioreconcile.adapters.telemetry.tracing import OtelTracing, parse_traceparent
from aioreconcile.engine.changeset import Action, ChangeSetEntry
from aioreconcile.engine.model import ObjectRef
from aioreconcile.reactor.tracing import CommitInfo, NoTracing, Tracing

SHA = "3f2a9c0d5e7b41a8a1c2d3e4f5061728394a5b6c"
INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
WEB = ObjectRef("apps", "Deployment", "shop", "web", "v1")


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[OtelTracing]:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield OtelTracing(provider)
    provider.shutdown()


def commit_info(**changes: object) -> CommitInfo:
    values: dict[str, object] = {
        "sync": "shop",
        "repository_url": "https://deploy-bot:s3cr3t-t0ken@git.example.com/acme/deploy.git",
        "ref": "main",
        "ref_type": "branch",
        "sha": SHA,
        "author": "Ada Lovelace <ada@example.com>",
        "subject": "Scale web to 3",
        "trigger": "push",
    }
    values.update(changes)
    return CommitInfo(**values)  # type: ignore[arg-type]


def entry(
    kind: str,
    name: str,
    action: Action,
    *,
    group: str = "",
    namespace: str = "shop",
    started_at: float | None = None,
    duration_s: float = 0.0,
    error: str | None = None,
    before: str | None = None,
    after: str | None = None,
) -> ChangeSetEntry:
    version = "v1"
    return ChangeSetEntry(
        ref=ObjectRef(group, kind, namespace, name, version),
        action=action,
        error=error,
        duration_s=duration_s,
        resource_version_before=before,
        resource_version_after=after,
        started_at=started_at,
    )


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def test_adapter_satisfies_the_port(tracing: OtelTracing) -> None:
    ports: list[Tracing] = [tracing, NoTracing()]
    assert len(ports) == 2


def test_commit_root_carries_vcs_attributes_and_stages_nest_under_it(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.commit(commit_info()) as root, tracing.stage("fetch", {"aioreconcile.x": 1}):
        assert root.traceparent is not None
    spans = by_name(exporter)
    commit, fetch = spans["reconcile shop"], spans["fetch"]
    assert commit.parent is None
    assert commit.kind is SpanKind.CONSUMER  # the webhook request is the SERVER span
    assert parent_id(fetch) == span_id(commit)
    assert commit.attributes is not None
    assert dict(commit.attributes) == {
        "aioreconcile.commit.short_sha": SHA[:7],
        "aioreconcile.trigger": "push",
        "vcs.repository.url.full": "https://git.example.com/acme/deploy.git",
        "vcs.ref.head.name": "main",
        "vcs.ref.head.revision": SHA,
        "vcs.ref.type": "branch",
        "vcs.ref.head.type": "branch",
        "aioreconcile.sync": "shop",
        "aioreconcile.commit.author": "Ada Lovelace <ada@example.com>",
        "aioreconcile.commit.subject": "Scale web to 3",
    }
    # Jaeger shows tags in the order sent: which commit and why come first.
    assert list(commit.attributes)[:2] == ["aioreconcile.commit.short_sha", "aioreconcile.trigger"]
    assert fetch.attributes is not None
    assert fetch.attributes["aioreconcile.x"] == 1


def test_poll_commit_is_internal_and_starts_when_the_trigger_arrived(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    arrived = time.time() - 2.5
    with tracing.commit(commit_info(trigger="poll", started_at=arrived)):
        pass
    (commit,) = exporter.get_finished_spans()
    assert commit.kind is SpanKind.INTERNAL
    assert commit.start_time == int(arrived * 1e9)
    assert commit.end_time is not None
    assert commit.end_time - commit.start_time >= 2.5e9


def test_object_spans_are_children_timed_from_the_changeset(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    began = time.time() - 1.0
    entries = [
        entry(
            "ConfigMap", "settings", Action.CREATED, started_at=began, duration_s=0.25, after="7"
        ),
        entry(
            "Deployment",
            "web",
            Action.CONFIGURED,
            group="apps",
            started_at=began + 0.1,
            duration_s=0.5,
            before="5",
            after="9",
        ),
        entry("Namespace", "shop", Action.UNCHANGED, namespace="", before="3", after="3"),
    ]
    with tracing.commit(commit_info()), tracing.stage("apply"):
        tracing.objects(entries, operation="apply")
    spans = by_name(exporter)
    commit, apply = spans["reconcile shop"], spans["apply"]
    configmap = spans["apply ConfigMap"]
    deployment = spans["apply Deployment"]
    namespace = spans["apply Namespace"]
    for span in (configmap, deployment, namespace):
        assert parent_id(span) == span_id(apply)
        assert trace_id(span) == trace_id(commit)
        assert span.status.status_code is StatusCode.UNSET
    assert parent_id(apply) == span_id(commit)

    assert configmap.start_time == int(began * 1e9)
    assert configmap.end_time == int(began * 1e9) + int(0.25 * 1e9)
    assert deployment.end_time == int((began + 0.1) * 1e9) + int(0.5 * 1e9)
    assert dict(deployment.attributes or {}) == {
        "aioreconcile.object.kind": "Deployment",
        "aioreconcile.object.name": "web",
        "aioreconcile.object.group": "apps",
        "aioreconcile.object.api_version": "apps/v1",
        "aioreconcile.action": "configured",
        "aioreconcile.resource_version.before": "5",
        "aioreconcile.resource_version.after": "9",
        "k8s.namespace.name": "shop",
        "k8s.deployment.name": "web",
    }
    assert configmap.attributes is not None
    assert "aioreconcile.resource_version.before" not in configmap.attributes
    assert not any(k.startswith("k8s.configmap") for k in configmap.attributes)
    assert namespace.attributes is not None
    assert namespace.attributes["k8s.namespace.name"] == "shop"
    assert namespace.attributes["aioreconcile.object.api_version"] == "v1"


def test_object_without_start_time_ends_now(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    before = time.time_ns()
    with tracing.commit(commit_info()):
        tracing.objects([entry("ConfigMap", "a", Action.DELETED)], operation="prune")
    span = by_name(exporter)["prune ConfigMap"]
    assert span.end_time is not None
    assert span.start_time is not None
    assert before <= span.start_time <= span.end_time <= time.time_ns()


def test_failed_object_is_an_error_with_the_servers_message(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    message = 'Deployment.apps "web" is invalid: spec.replicas: Invalid value: -1'
    with tracing.commit(commit_info()):
        tracing.objects(
            [entry("Deployment", "web", Action.FAILED, group="apps", error=message)],
            operation="apply",
        )
    span = by_name(exporter)["apply Deployment"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == message
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.message"] == message


def test_exception_escaping_a_stage_marks_it_and_is_reraised(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    with (
        pytest.raises(RuntimeError, match="render exploded"),
        tracing.commit(commit_info()),
        tracing.stage("render"),
    ):
        raise RuntimeError("render exploded")
    spans = by_name(exporter)
    render, commit = spans["render"], spans["reconcile shop"]
    assert render.status.status_code is StatusCode.ERROR
    assert [e.name for e in render.events] == ["exception"]
    assert render.events[0].attributes is not None
    assert render.events[0].attributes["exception.type"] == "RuntimeError"
    assert commit.status.status_code is StatusCode.ERROR
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_record_error_sets_status_and_event(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.commit(commit_info()), tracing.stage("prune") as span:
        span.record_error("2 object(s) failed to delete")
        span.record_error("with cause", error=ValueError("boom"))
        span.set_attributes({"aioreconcile.objects": 2, "aioreconcile.kinds": ["A", "B"]})
    prune = by_name(exporter)["prune"]
    assert prune.status.status_code is StatusCode.ERROR
    assert [e.name for e in prune.events] == ["exception", "exception"]
    assert prune.events[1].attributes is not None
    assert prune.events[1].attributes["exception.type"] == "ValueError"
    assert "exception.stacktrace" in prune.events[1].attributes
    assert prune.attributes is not None
    assert prune.attributes["aioreconcile.kinds"] == ("A", "B")


def test_incoming_traceparent_is_continued(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.commit(commit_info(parent_traceparent=INCOMING)) as root:
        assert root.traceparent is not None
        assert root.traceparent.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    (commit,) = exporter.get_finished_spans()
    assert trace_id(commit) == 0x0AF7651916CD43DD8448EB211C80319C
    assert parent_id(commit) == 0xB7AD6B7169203331
    assert commit.parent is not None
    assert commit.parent.is_remote


@pytest.mark.parametrize(
    "garbage",
    [
        "not-a-traceparent",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "",
    ],
)
def test_invalid_traceparent_starts_a_new_trace(
    tracing: OtelTracing, exporter: InMemorySpanExporter, garbage: str
) -> None:
    with tracing.commit(commit_info(parent_traceparent=garbage)):
        pass
    (commit,) = exporter.get_finished_spans()
    assert commit.parent is None
    assert trace_id(commit) != 0x0AF7651916CD43DD8448EB211C80319C


def test_commit_is_a_root_even_inside_another_span(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.stage("outer"), tracing.commit(commit_info()):
        pass
    assert by_name(exporter)["reconcile shop"].parent is None


def test_heal_is_a_new_root_linked_to_the_commit_trace(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.commit(commit_info()) as root:
        applied_by = root.traceparent
    with (
        tracing.commit(commit_info(sync="other")),
        tracing.heal(
            sync="shop",
            ref=WEB,
            revision=SHA,
            repository_url="https://deploy-bot:s3cr3t-t0ken@git.example.com/acme/deploy.git",
            link_traceparent=applied_by,
            writers=["kubectl-edit"],
            fields=["spec.replicas"],
        ),
    ):
        tracing.objects(
            [entry("Deployment", "web", Action.CONFIGURED, group="apps")], operation="apply"
        )
    spans = by_name(exporter)
    commit, heal = spans["reconcile shop"], spans["heal Deployment"]
    assert heal.parent is None
    assert trace_id(heal) != trace_id(commit)
    (link,) = heal.links
    assert link.context.trace_id == trace_id(commit)
    assert link.context.span_id == span_id(commit)
    assert heal.attributes is not None
    assert heal.attributes["aioreconcile.drift.writers"] == ("kubectl-edit",)
    assert heal.attributes["aioreconcile.drift.fields"] == ("spec.replicas",)
    assert heal.attributes["aioreconcile.sync"] == "shop"
    assert parent_id(spans["apply Deployment"]) == span_id(heal)


def test_heal_root_says_which_revision_it_heals_back_to_and_the_commit_trace_id(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    """A search by SHA finds the heals too; Jaeger's UI shows a link only as "span in another
    trace", so the commit trace's id is an attribute as well."""
    with tracing.heal(
        sync="shop",
        ref=WEB,
        revision=SHA,
        repository_url="https://deploy-bot:s3cr3t-t0ken@git.example.com/acme/deploy.git",
        link_traceparent=INCOMING,
        writers=[],
        fields=["spec.replicas"],
    ):
        pass
    (heal,) = exporter.get_finished_spans()
    attributes = dict(heal.attributes or {})
    assert heal.name == "heal Deployment"
    assert list(attributes)[:2] == ["aioreconcile.commit.short_sha", "vcs.ref.head.revision"]
    assert attributes["vcs.ref.head.revision"] == SHA
    assert attributes["aioreconcile.commit.short_sha"] == SHA[:7]
    assert attributes["vcs.repository.url.full"] == "https://git.example.com/acme/deploy.git"
    assert attributes["aioreconcile.commit.trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert attributes["aioreconcile.object.ref"] == "Deployment.apps/shop/web"
    assert attributes["aioreconcile.object.group"] == "apps"
    assert attributes["k8s.namespace.name"] == "shop"
    assert attributes["k8s.deployment.name"] == "web"
    assert "s3cr3t-t0ken" not in heal.to_json()


def test_span_names_are_bounded_by_the_kinds_not_the_objects(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    """Jaeger indexes operations by span name: 200 objects of 3 kinds, applied and pruned and
    one healed, make a handful of operations, not one per object (issue 15)."""
    kinds = [("", "ConfigMap"), ("apps", "Deployment"), ("", "Service")]
    entries = [
        entry(kind, f"object-{i}", Action.CREATED, group=group, namespace=f"ns-{i % 7}")
        for i in range(200)
        for group, kind in [kinds[i % 3]]
    ]
    with tracing.commit(commit_info()), tracing.stage("apply"):
        tracing.objects(entries, operation="apply")
        tracing.objects(entries[:50], operation="prune")
    for ref in (e.ref for e in entries[:20]):
        with tracing.heal(
            sync="shop",
            ref=ref,
            revision=SHA,
            repository_url="https://git.example.com/acme/deploy.git",
            link_traceparent=None,
            writers=[],
            fields=[],
        ):
            tracing.objects([entries[0]], operation="apply")
    spans = exporter.get_finished_spans()
    assert len(spans) == 2 + 200 + 50 + 20 * 2
    assert {s.name for s in spans} == {
        "reconcile shop",
        "apply",
        "apply ConfigMap",
        "apply Deployment",
        "apply Service",
        "prune ConfigMap",
        "prune Deployment",
        "prune Service",
        "heal ConfigMap",
        "heal Deployment",
        "heal Service",
    }
    names = {
        (s.attributes or {})["aioreconcile.object.name"]
        for s in spans
        if s.name.startswith("apply ")
        and s.attributes
        and "aioreconcile.object.name" in s.attributes
    }
    assert len(names) == 200  # each object is still told apart, by its attributes


def test_heal_without_a_valid_annotation_has_no_link(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    for annotation in (None, "garbage"):
        with tracing.heal(
            sync="shop",
            ref=WEB,
            revision=SHA,
            repository_url="https://git.example.com/acme/deploy.git",
            link_traceparent=annotation,
            writers=[],
            fields=[],
        ):
            pass
    assert [len(s.links) for s in exporter.get_finished_spans()] == [0, 0]


def test_no_credential_is_exported_anywhere(
    tracing: OtelTracing, exporter: InMemorySpanExporter
) -> None:
    token = "s3cr3t-t0ken"
    leaky = f"fetch https://deploy-bot:{token}@git.example.com/acme/deploy.git failed"

    def reconcile() -> None:
        with (
            tracing.commit(commit_info()),
            tracing.stage("fetch", {"aioreconcile.source": f"https://x:{token}@h/r.git"}) as scope,
        ):
            scope.record_error(leaky)
            scope.set_attributes({"aioreconcile.sources": [f"ssh://git:{token}@h/r.git"]})
            tracing.objects(
                [entry("ConfigMap", "a", Action.FAILED, error=leaky)], operation="apply"
            )
            raise OSError(leaky)

    with pytest.raises(OSError, match="fetch"):
        reconcile()
    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    for span in spans:
        assert span.to_json().count(token) == 0, span.name
    assert "https://***@git.example.com/acme/deploy.git" in spans[0].to_json()


@pytest.mark.parametrize(
    "url",
    [
        "https://deploy-bot:{t}@git.example.com/acme/deploy.git",
        "https://u:pa#{t}@git.example.com/acme/deploy.git",
        "https://git.example.com/acme/deploy.git?private_token={t}",
        "ssh://git:{t}@git.example.com/acme/deploy.git",
    ],
)
def test_the_exported_repository_url_carries_no_token(
    tracing: OtelTracing, exporter: InMemorySpanExporter, url: str
) -> None:
    token = "tok-3xp0rted-n0where"
    with tracing.commit(commit_info(repository_url=url.format(t=token))) as root:
        root.record_error(f"git: unable to access '{url.format(t=token)}': refused")

    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    shown = str(span.attributes["vcs.repository.url.full"])
    assert shown.endswith("git.example.com/acme/deploy.git")
    assert token not in span.to_json()


def test_parse_traceparent() -> None:
    parsed = parse_traceparent(INCOMING)
    assert parsed is not None
    assert parsed.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert parse_traceparent(None) is None
    assert parse_traceparent("01-zz") is None


def test_no_tracing_paths_do_nothing() -> None:
    for disabled in (NoTracing(),):
        with disabled.commit(commit_info()) as root, disabled.stage("apply") as stage:
            disabled.objects([entry("ConfigMap", "a", Action.CREATED)], operation="apply")
            stage.set_attributes({"a": 1})
            stage.record_error("x")
            assert root.traceparent is None
        with disabled.heal(
            sync="s",
            ref=WEB,
            revision=SHA,
            repository_url="",
            link_traceparent=INCOMING,
            writers=[],
            fields=[],
        ) as heal:
            assert heal.traceparent is None


def test_settings_from_environ() -> None:
    settings = TracingSettings.from_environ(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_SERVICE_NAME": "gitops-prod",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=platform%20ops",
        }
    )
    assert settings.enabled
    assert settings.endpoint == "http://collector:4318/"
    assert settings.exporter_endpoint == "http://collector:4318/v1/traces"
    assert settings.service_name == "gitops-prod"
    assert settings.sampler == "parentbased_traceidratio"
    assert settings.sampler_arg == "0.25"
    assert settings.resource_attributes == "deployment.environment=prod,team=platform%20ops"


def test_settings_defaults_and_overrides() -> None:
    empty = TracingSettings.from_environ({})
    assert not empty.enabled
    assert empty.service_name == "aioreconcile"
    assert empty.protocol == "http/protobuf"
    traces_only = TracingSettings.from_environ(
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom/traces"}
    )
    assert traces_only.exporter_endpoint == "http://c:4318/custom/traces"
    overridden = TracingSettings.from_environ(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_SERVICE_NAME": "env"},
        endpoint="http://b:4318",
        service_name=None,
    )
    assert overridden.exporter_endpoint == "http://b:4318/v1/traces"
    assert overridden.service_name == "env"
    named = TracingSettings.from_environ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource"})
    assert named.service_name == "from-resource"
    off = TracingSettings.from_environ(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_SDK_DISABLED": "true"}
    )
    assert not off.enabled


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        ({"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, "OTEL_RESOURCE_ATTRIBUTES"),
    ],
)
def test_unusable_settings_name_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(TracingConfigError, match=variable):
        TracingSettings.from_environ(environ)


def test_nothing_configured_means_no_sdk() -> None:
    handle = start_tracing(TracingSettings.from_environ({}))
    assert handle.tracing is None
    assert not handle.enabled
    handle.shutdown()


def test_start_tracing_exports_through_the_batch_processor_on_shutdown() -> None:
    exporter = InMemorySpanExporter()
    settings = TracingSettings.from_environ({}, service_name="bench-svc", sampler="always_on")
    with start_tracing(settings, exporter=exporter) as handle:
        assert handle.enabled
        assert isinstance(handle.tracing, OtelTracing)
        with handle.tracing.commit(commit_info()), handle.tracing.stage("render"):
            pass
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["reconcile shop", "render"]
    assert spans[0].resource.attributes["service.name"] == "bench-svc"


def test_sampler_always_off_exports_nothing_but_still_propagates() -> None:
    exporter = InMemorySpanExporter()
    settings = TracingSettings.from_environ({"OTEL_TRACES_SAMPLER": "always_off"})
    with start_tracing(settings, exporter=exporter) as handle:
        assert handle.tracing is not None
        with handle.tracing.commit(commit_info()) as root:
            assert root.traceparent is not None
            assert int(root.traceparent.rsplit("-", 1)[1], 16) & 1 == 0  # not sampled
    assert exporter.get_finished_spans() == ()


def test_log_records_carry_the_current_span_ids(tracing: OtelTracing) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tests.telemetry.correlation")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(Keep())
    install_log_correlation(logger)
    install_log_correlation(logger)
    assert sum(isinstance(f, TraceContextFilter) for f in logger.handlers[0].filters) == 1
    try:
        logger.info("outside")
        with tracing.commit(commit_info()) as root:
            logger.info("inside")
    finally:
        logger.handlers.clear()
    outside, inside = records
    assert not hasattr(outside, "trace_id")
    assert root.traceparent is not None
    _, trace_hex, span_hex, _ = root.traceparent.split("-")
    assert vars(inside)["trace_id"] == trace_hex
    assert vars(inside)["span_id"] == span_hex


def _object_spans(*, finished_directly: bool) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    tracing = OtelTracing(provider, span_processor=processor if finished_directly else None)
    began = 1_700_000_000.25
    entries = [
        entry(
            "ConfigMap",
            "settings",
            Action.CONFIGURED,
            started_at=began,
            duration_s=0.004,
            before="7",
            after="9",
        ),
        entry(
            "Deployment",
            "web",
            Action.CREATED,
            group="apps",
            started_at=began + 0.001,
            duration_s=0.002,
            after="10",
        ),
        entry(
            "Service",
            "web",
            Action.FAILED,
            started_at=began + 0.002,
            duration_s=0.001,
            error="https://bot:s3cr3t@git.example.com denied",
        ),
        entry("Namespace", "shop", Action.UNCHANGED, namespace="", started_at=began + 0.003),
    ]
    with tracing.commit(commit_info(parent_traceparent=INCOMING)), tracing.stage("apply"):
        tracing.objects(entries, operation="apply")
    provider.shutdown()
    return [s for s in exporter.get_finished_spans() if s.name.startswith("apply ")]


def _comparable(span: ReadableSpan) -> tuple[object, ...]:
    context = span.get_span_context()
    assert context is not None
    assert span.parent is not None
    return (
        span.name,
        span.kind,
        context.trace_flags,
        context.trace_state,
        context.is_remote,
        span.parent.span_id != 0,
        dict(span.attributes or {}),
        (span.status.status_code, span.status.description),
        [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
        list(span.links),
        span.start_time,
        span.end_time,
        span.resource,
        span.instrumentation_scope,
        span.dropped_attributes,
    )


def test_object_spans_finished_directly_are_the_spans_the_sdk_would_make() -> None:
    """The fast path (finished spans handed to the processor) against ``start_span`` + ``end``:
    the same names, attributes, status, exception event, times, flags, scope and resource,
    children of the same parent in the same trace, only the random span ids differ."""
    direct, sdk = _object_spans(finished_directly=True), _object_spans(finished_directly=False)
    assert len(direct) == 4
    assert [_comparable(s) for s in direct] == [_comparable(s) for s in sdk]
    for spans in (direct, sdk):
        parents = {s.parent.span_id for s in spans if s.parent is not None}
        assert len(parents) == 1
        assert {s.context.trace_id for s in spans if s.context is not None} == {
            int("0af7651916cd43dd8448eb211c80319c", 16)
        }
    assert "s3cr3t" not in repr([_comparable(s) for s in direct])


def test_no_object_span_under_an_unsampled_commit() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    tracing = OtelTracing(provider, span_processor=processor)
    unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    with tracing.commit(commit_info(parent_traceparent=unsampled)), tracing.stage("apply"):
        tracing.objects([entry("ConfigMap", "settings", Action.CREATED)], operation="apply")
    provider.shutdown()
    assert exporter.get_finished_spans() == ()


class _SlowFlushProvider(TracerProvider):
    """Counts flushes; each waits until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__(shutdown_on_exit=False)
        self.flushes = 0
        self.flushing = threading.Event()
        self.release = threading.Event()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        self.flushes += 1
        self.flushing.set()
        self.release.wait(5)
        return super().force_flush(timeout_millis)


def test_a_storm_of_ended_commits_is_flushed_off_the_caller_and_coalesced() -> None:
    provider = _SlowFlushProvider()
    flusher = TraceFlusher(provider)
    try:
        flusher.request()
        assert provider.flushing.wait(5)
        began = time.monotonic()
        for _ in range(100):  # while the first flush is still running
            flusher.request()
        assert time.monotonic() - began < 0.5  # the caller (the event loop) never waits
        provider.release.set()
        deadline = time.monotonic() + 5
        while provider.flushes < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert provider.flushes == 2  # the first, then one for all hundred requests
    finally:
        provider.release.set()
        flusher.stop()
        provider.shutdown()


def test_the_end_of_a_commit_asks_for_a_flush_and_a_stage_does_not(
    exporter: InMemorySpanExporter,
) -> None:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ended: list[str] = []
    tracing = OtelTracing(provider, trace_ended=lambda: ended.append("flush"))
    with tracing.commit(commit_info()):
        with tracing.stage("apply"):
            pass
        assert ended == []
    assert ended == ["flush"]
    provider.shutdown()


class _Batches(InMemorySpanExporter):
    """Records the size of every export call: one call is one OTLP request."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.sizes.append(len(spans))
        return super().export(spans)


def _commit_of(tracing: OtelTracing, objects: int) -> None:
    entries = [
        entry("ConfigMap", f"settings-{i}", Action.CONFIGURED, before=str(i), after=str(i + 1))
        for i in range(objects)
    ]
    with tracing.commit(commit_info()), tracing.stage("apply"):
        tracing.objects(entries, operation="apply")


def test_a_thousand_object_commit_is_exported_in_one_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SDK's batches of 512 made three requests of a 1,000-object commit (and woke the batch
    thread in the middle of it); the flush at the commit's end now sends it in one."""
    monkeypatch.delenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", raising=False)
    exporter = _Batches()
    with start_tracing(TracingSettings.from_environ({}), exporter=exporter) as handle:
        assert handle.tracing is not None
        _commit_of(handle.tracing, 1000)
        deadline = time.monotonic() + 5
        while sum(exporter.sizes) < 1002 and time.monotonic() < deadline:
            time.sleep(0.01)  # the flush at the commit's end runs in its own thread
        assert exporter.sizes == [1002]  # root, stage and 1,000 objects


def test_the_batch_size_variable_still_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100")
    exporter = _Batches()
    with start_tracing(TracingSettings.from_environ({}), exporter=exporter) as handle:
        assert handle.tracing is not None
        _commit_of(handle.tracing, 250)
    assert sum(exporter.sizes) == 252
    assert max(exporter.sizes) <= 100
