"""The reactor's tracing port, implemented with OpenTelemetry: one trace per commit reconcile.

``OtelTracing`` matches ``aioreconcile.reactor.tracing.Tracing`` structurally; adapters may not
import the reactor (import-linter keeps them independent), so the commit it receives is typed by
the ``Commit`` protocol below, which ``reactor.tracing.CommitInfo`` satisfies.

Span names are low-cardinality (``reconcile shop``, ``apply ConfigMap``, ``heal Deployment``,
``POST /hooks/{name}``): a backend indexes operations by name, so a name per object would grow
Jaeger's operation list by one entry per object ever applied. Which object a span is about is in
its attributes (OpenTelemetry's span-name guidance; ``aioreconcile trace`` prints the object
from them).

Nothing secret is exported: only the attributes named here, repository URLs as
``engine.redaction.redact_url`` shows them, and error texts through ``redact_text`` (no
``scheme://user:password@``, no URL query). Object bodies never reach a span.
"""

import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Final, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes
from opentelemetry.util.types import AttributeValue as OtelAttributeValue

from aioreconcile import __version__
from aioreconcile.engine.changeset import Action, ChangeSetEntry
from aioreconcile.engine.model import ObjectRef
from aioreconcile.engine.redaction import redact_text, redact_url

AttributeValue = str | bool | int | float | Sequence[str]
"""The same union as ``reactor.tracing.AttributeValue``, restated because we cannot import it."""

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_GETTER: Final = DefaultGetter()

# Semantic-convention names exist for these kinds only, keyed by (group, kind) so that a custom
# resource that happens to be called "Job" is not labelled as a batch Job.
_K8S_NAME_ATTRIBUTE: Final[Mapping[tuple[str, str], str]] = {
    ("", "Pod"): "k8s.pod.name",
    ("", "Namespace"): "k8s.namespace.name",
    ("", "Node"): "k8s.node.name",
    ("", "Service"): "k8s.service.name",
    ("", "ReplicationController"): "k8s.replicationcontroller.name",
    ("", "ResourceQuota"): "k8s.resourcequota.name",
    ("", "PersistentVolume"): "k8s.persistentvolume.name",
    ("", "PersistentVolumeClaim"): "k8s.persistentvolumeclaim.name",
    ("apps", "Deployment"): "k8s.deployment.name",
    ("apps", "StatefulSet"): "k8s.statefulset.name",
    ("apps", "DaemonSet"): "k8s.daemonset.name",
    ("apps", "ReplicaSet"): "k8s.replicaset.name",
    ("batch", "Job"): "k8s.job.name",
    ("batch", "CronJob"): "k8s.cronjob.name",
    ("autoscaling", "HorizontalPodAutoscaler"): "k8s.hpa.name",
    ("storage.k8s.io", "StorageClass"): "k8s.storageclass.name",
}


class Commit(Protocol):
    """What the root span needs to know about a commit (``reactor.tracing.CommitInfo``)."""

    @property
    def sync(self) -> str: ...
    @property
    def repository_url(self) -> str: ...
    @property
    def ref(self) -> str: ...
    @property
    def ref_type(self) -> str: ...
    @property
    def sha(self) -> str: ...
    @property
    def author(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def trigger(self) -> str: ...
    @property
    def parent_traceparent(self) -> str | None: ...
    @property
    def link_traceparent(self) -> str | None: ...
    @property
    def started_at(self) -> float | None: ...


def traceparent_of(span: trace.Span) -> str | None:
    """The W3C ``traceparent`` of a span, or None for the invalid (non-)span."""
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def parse_traceparent(value: str | None) -> trace.SpanContext | None:
    """The span context a W3C ``traceparent`` names, or None when absent or malformed."""
    if not value:
        return None
    extracted = _PROPAGATOR.extract({"traceparent": value.strip()}, getter=_GETTER)
    span_context = trace.get_current_span(extracted).get_span_context()
    return span_context if span_context.is_valid else None


SHORT_SHA_LENGTH: Final = 7
"""As GitHub and GitLab show a commit, so the value a user copies from there is searchable."""


def object_span_name(ref: ObjectRef, operation: str) -> str:
    """``apply ConfigMap``: bounded by the kinds in use, never by the objects."""
    return f"{operation} {ref.kind}"


def _revision_attributes(sha: str) -> dict[str, OtelAttributeValue]:
    return {"aioreconcile.commit.short_sha": sha[:SHORT_SHA_LENGTH], "vcs.ref.head.revision": sha}


def _identity_attributes(ref: ObjectRef) -> dict[str, OtelAttributeValue]:
    attributes: dict[str, OtelAttributeValue] = {
        "aioreconcile.object.kind": ref.kind,
        "aioreconcile.object.name": ref.name,
        "aioreconcile.object.group": ref.group,
        "aioreconcile.object.api_version": ref.api_version,
    }
    if ref.namespace:
        attributes["k8s.namespace.name"] = ref.namespace
    semconv = _K8S_NAME_ATTRIBUTE.get((ref.group, ref.kind))
    if semconv is not None:
        attributes[semconv] = ref.name
    return attributes


def identity_attributes(ref: ObjectRef) -> dict[str, OtelAttributeValue]:
    """The first attributes of an object span, which object it is: the same on every span of
    that object, so the OTLP encoder (otlp.py) encodes them once per object."""
    return _identity_attributes(ref)


def change_attributes(entry: ChangeSetEntry) -> dict[str, OtelAttributeValue]:
    """The attributes of an object span after its identity: what happened to it."""
    attributes: dict[str, OtelAttributeValue] = {"aioreconcile.action": entry.action.value}
    if entry.resource_version_before is not None:
        attributes["aioreconcile.resource_version.before"] = entry.resource_version_before
    if entry.resource_version_after is not None:
        attributes["aioreconcile.resource_version.after"] = entry.resource_version_after
    return attributes


def object_attributes(entry: ChangeSetEntry) -> dict[str, OtelAttributeValue]:
    """The attributes of one object span: semantic-convention names where they exist, ours
    always (so a query never depends on the kind having a convention)."""
    attributes = identity_attributes(entry.ref)
    attributes |= change_attributes(entry)
    return attributes


SCOPE: Final = InstrumentationScope("aioreconcile", __version__)
"""The instrumentation scope of the spans made without the SDK's tracer (object spans)."""


def object_span_times(entry: ChangeSetEntry, now: int) -> tuple[int, int]:
    """Start and end (ns) of an object span: the applier's recorded times, else ``now``."""
    if entry.started_at is None:
        return now, now
    start = int(entry.started_at * 1e9)
    return start, start + int(entry.duration_s * 1e9)


ObjectSpanEncoder = Callable[[Sequence[ChangeSetEntry], str, trace.SpanContext, int], ReadableSpan]
"""Object spans of ``entries`` (none FAILED) under ``parent`` at ``now``, already encoded, as one
item for the span processor (``otlp.PreEncoder``)."""


class ObjectSpan(ReadableSpan):
    """An object span made after the fact (``OtelTracing._finished_objects``), which keeps its
    ChangeSet entry: its attributes are ``object_attributes(entry)``, made when first read (an
    in-memory or the gRPC exporter reads them; the OTLP/HTTP encoder does not, it encodes the
    object's identity once per object and the entry's change, ``SpanEncoder``)."""

    def __init__(self, entry: ChangeSetEntry, **fields: Any) -> None:
        super().__init__(**fields)
        self.entry = entry

    @property
    def attributes(self) -> Attributes:
        if self._attributes is None:
            self._attributes = object_attributes(self.entry)
        return super().attributes

    def to_json(self, indent: int | None = 4) -> str:
        self.attributes  # noqa: B018 - made now, as to_json reads the field itself
        return str(super().to_json(indent))


def _exported(value: AttributeValue) -> OtelAttributeValue:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bool | int | float):
        return value
    return [redact_text(v) for v in value]


def _exception_attributes(
    message: str, error: BaseException | None
) -> dict[str, OtelAttributeValue]:
    attributes: dict[str, OtelAttributeValue] = {
        "exception.type": type(error).__qualname__ if error is not None else "Error",
        "exception.message": redact_text(message),
    }
    if error is not None:
        stacktrace = "".join(traceback.format_exception(error))
        attributes["exception.stacktrace"] = redact_text(stacktrace)
    return attributes


def _add_exception_event(
    span: trace.Span, message: str, *, error: BaseException | None, timestamp: int | None = None
) -> None:
    """An OTel ``exception`` event, like ``record_exception`` but with every text redacted."""
    span.add_event("exception", _exception_attributes(message, error), timestamp=timestamp)


_UNSET: Final = trace.Status(trace.StatusCode.UNSET)


def _set_error(span: trace.Span, message: str) -> None:
    span.set_status(trace.Status(trace.StatusCode.ERROR, redact_text(message)))


class OtelSpan:
    """``SpanScope`` over an OTel span."""

    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self._span.set_attributes({k: _exported(v) for k, v in attributes.items()})

    def record_error(self, message: str, *, error: BaseException | None = None) -> None:
        _set_error(self._span, message)
        _add_exception_event(self._span, message, error=error)

    @property
    def traceparent(self) -> str | None:
        return traceparent_of(self._span)


@contextmanager
def _current(span: trace.Span, on_end: Callable[[], None] | None = None) -> Iterator[OtelSpan]:
    """Make ``span`` the current one (contextvars) for the block, end it on exit, then call
    ``on_end`` (a commit root: ask for the export of its trace now).

    An exception escaping the block is an error of this span; a cancellation (a BaseException
    such as asyncio's CancelledError on shutdown) is not, and is only noted as an attribute.
    """
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield OtelSpan(span)
    except Exception as e:
        _set_error(span, f"{type(e).__qualname__}: {e}")
        _add_exception_event(span, str(e), error=e)
        raise
    except BaseException:
        span.set_attribute("aioreconcile.cancelled", True)
        raise
    finally:
        otel_context.detach(token)
        span.end()
        if on_end is not None:
            on_end()


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1e9)


class OtelTracing:
    """``reactor.tracing.Tracing`` with spans from ``provider`` (a private TracerProvider in
    ``start_tracing``; tests pass one with an in-memory exporter).

    ``trace_ended`` is called, without blocking, when a commit trace's root has ended:
    ``start_tracing`` passes a request to export the pending spans now, so the trace is whole in
    the backend at once instead of after the batch processor's schedule delay.

    ``span_processor`` (with an SDK provider; ``start_tracing`` passes its batch processor) is
    where object spans go as finished ``ReadableSpan``s, built directly: they are created after
    the fact from the ChangeSet's recorded times, are never current, never get a child, and
    inherit their parent's sampling decision (what every sampler ``build_sampler`` makes
    decides for a child of a sampled span in the same trace). The SDK's ``start_span`` +
    ``end`` cost ~22 µs each (sampler, context lookups, attribute cleaning, two processor
    calls), several times the span itself; a 1,000-object commit makes 1,000 of them. Without
    it (tests with their own provider) object spans go through ``start_span`` as before.

    ``encode_objects`` (``start_tracing`` passes ``otlp.PreEncoder`` when its exporter is our
    OTLP/HTTP one) goes further: the object spans of a run of entries (a failed entry keeps
    its ``ObjectSpan``, with status and ``exception`` event) are written to OTLP bytes at once
    and queued as one item, never made as span objects (otlp.py, ``EncodedObjectSpans``)."""

    def __init__(
        self,
        provider: trace.TracerProvider,
        *,
        trace_ended: Callable[[], None] | None = None,
        span_processor: SpanProcessor | None = None,
        encode_objects: ObjectSpanEncoder | None = None,
    ) -> None:
        self._tracer = provider.get_tracer("aioreconcile", __version__)
        self._trace_ended = trace_ended
        self._sink = span_processor if isinstance(provider, SdkTracerProvider) else None
        self._encode_objects = encode_objects if self._sink is not None else None
        if self._sink is not None:
            assert isinstance(provider, SdkTracerProvider)
            self._resource = provider.resource
            self._new_span_id = provider.id_generator.generate_span_id
            self._scope = SCOPE

    def commit(self, info: Commit) -> AbstractContextManager[OtelSpan]:
        """``reconcile <sync>``: the root of a commit trace, unless a webhook's sender gave a
        trace to continue (``parent_traceparent``: then a child of the request span in it).

        A push without one is a root that links to its webhook request (``link_traceparent``),
        never the request's child: a backend lists a trace by its root, and Jaeger's search list
        showed every push as ``POST /hooks/{name}``, with no sync or SHA. OpenTelemetry's
        messaging conventions allow a consumer to start a new trace and link to the producing
        context; the linked trace id is also an attribute, as on a heal, since Jaeger's UI shows
        a link only as "span in another trace"."""
        parent = parse_traceparent(info.parent_traceparent)
        linked = None if parent is not None else parse_traceparent(info.link_traceparent)
        # Never nested under whatever happens to be current in the caller.
        context = (
            trace.set_span_in_context(trace.NonRecordingSpan(parent))
            if parent is not None
            else otel_context.Context()
        )
        # The short SHA and the trigger first, for backends that show attributes in the order
        # sent (OTLP keeps it). Jaeger sorts tags by key: there the ``aioreconcile.*`` ones,
        # short SHA and trigger among them, come before the ``vcs.*`` ones.
        attributes: dict[str, OtelAttributeValue] = {
            "aioreconcile.commit.short_sha": info.sha[:SHORT_SHA_LENGTH],
            "aioreconcile.trigger": info.trigger,
            "vcs.ref.head.revision": info.sha,
            "vcs.repository.url.full": redact_url(info.repository_url),
            "vcs.ref.head.name": info.ref,
            "vcs.ref.type": info.ref_type,
            "vcs.ref.head.type": info.ref_type,
            "aioreconcile.sync": info.sync,
        }
        if linked is not None:
            attributes["aioreconcile.webhook.trace_id"] = format(linked.trace_id, "032x")
        if info.author:
            attributes["aioreconcile.commit.author"] = redact_text(info.author)
        if info.subject:
            attributes["aioreconcile.commit.subject"] = redact_text(info.subject)
        span = self._tracer.start_span(
            f"reconcile {info.sync}",
            context=context,
            # A push is consumed from the work queue after its webhook request (the SERVER span,
            # ``request``) was answered: OpenTelemetry's messaging conventions call that CONSUMER,
            # whether it continues the request's trace or starts one linked to it.
            kind=trace.SpanKind.CONSUMER if info.trigger == "push" else trace.SpanKind.INTERNAL,
            links=(
                [trace.Link(linked, {"aioreconcile.link": "webhook request"})]
                if linked is not None
                else []
            ),
            attributes=attributes,
            start_time=_ns(info.started_at),
        )
        return _current(span, self._trace_ended)

    def stage(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> AbstractContextManager[OtelSpan]:
        span = self._tracer.start_span(
            name, attributes={k: _exported(v) for k, v in (attributes or {}).items()}
        )
        return _current(span)

    def objects(self, entries: Sequence[ChangeSetEntry], *, operation: str) -> None:
        now = time.time_ns()
        parent = otel_context.get_current()  # looked up once: thousands of entries per apply
        parent_span = trace.get_current_span(parent)
        parent_context = parent_span.get_span_context()
        if self._sink is not None and parent_context.is_valid:
            if parent_span.is_recording():
                self._finished_objects(entries, operation, parent_context, now)
            return  # an unsampled parent: its children are not sampled either
        for entry in entries:
            start, end = object_span_times(entry, now)
            span = self._tracer.start_span(
                object_span_name(entry.ref, operation),
                context=parent,
                attributes=object_attributes(entry),
                start_time=start,
            )
            if entry.action is Action.FAILED:
                message = entry.error or f"{operation} failed"
                _set_error(span, message)
                _add_exception_event(span, message, error=None, timestamp=end)
            span.end(end_time=end)

    def _finished_objects(
        self,
        entries: Sequence[ChangeSetEntry],
        operation: str,
        parent: trace.SpanContext,
        now: int,
    ) -> None:
        """The object spans as the SDK would make them (same ids, flags, trace state, times,
        status and ``exception`` event; tests/telemetry/test_tracing.py compares both), handed
        to the processor as finished spans."""
        assert self._sink is not None
        trace_id, flags, state = parent.trace_id, parent.trace_flags, parent.trace_state
        on_end, new_span_id = self._sink.on_end, self._new_span_id
        resource, scope = self._resource, self._scope
        encode = self._encode_objects
        run: list[ChangeSetEntry] = []  # the entries encoded together, in order
        for entry in entries:
            if encode is not None and entry.action is not Action.FAILED:
                run.append(entry)
                continue
            if run and encode is not None:
                on_end(encode(run, operation, parent, now))
                run = []
            start, end = object_span_times(entry, now)
            status = _UNSET
            events: tuple[Event, ...] = ()
            if entry.action is Action.FAILED:
                message = entry.error or f"{operation} failed"
                status = trace.Status(trace.StatusCode.ERROR, redact_text(message))
                events = (Event("exception", _exception_attributes(message, None), end),)
            on_end(
                ObjectSpan(
                    entry,
                    name=object_span_name(entry.ref, operation),
                    context=trace.SpanContext(trace_id, new_span_id(), False, flags, state),
                    parent=parent,
                    resource=resource,
                    events=events,
                    status=status,
                    start_time=start,
                    end_time=end,
                    instrumentation_scope=scope,
                )
            )
        if run and encode is not None:
            on_end(encode(run, operation, parent, now))

    def heal(
        self,
        *,
        sync: str,
        ref: ObjectRef,
        revision: str,
        repository_url: str,
        link_traceparent: str | None,
        writers: Sequence[str],
        fields: Sequence[str],
    ) -> AbstractContextManager[OtelSpan]:
        """``heal <Kind>``: a root of its own, carrying the revision it heals back to (so a
        search by SHA finds it) and the linked commit trace's id as an attribute (Jaeger's UI
        shows a link only as "span in another trace" with a span id)."""
        linked = parse_traceparent(link_traceparent)
        links = (
            [trace.Link(linked, {"aioreconcile.link": "last applied by"})]
            if linked is not None
            else []
        )
        attributes = _revision_attributes(revision)
        attributes["vcs.repository.url.full"] = redact_url(repository_url)
        attributes["aioreconcile.sync"] = sync
        attributes["aioreconcile.object.ref"] = str(ref)
        attributes |= _identity_attributes(ref)
        if linked is not None:
            attributes["aioreconcile.commit.trace_id"] = format(linked.trace_id, "032x")
        attributes["aioreconcile.drift.writers"] = [redact_text(w) for w in writers]
        attributes["aioreconcile.drift.fields"] = [redact_text(f) for f in fields]
        span = self._tracer.start_span(
            f"heal {ref.kind}",
            context=otel_context.Context(),
            links=links,
            attributes=attributes,
        )
        return _current(span)

    def request(
        self,
        *,
        method: str,
        route: str,
        path: str,
        scheme: str,
        user_agent: str | None,
        traceparent: str | None,
    ) -> AbstractContextManager[OtelSpan]:
        """The SERVER span of one webhook request (``POST /hooks/{name}``), continuing the
        sender's ``traceparent`` when valid. Only what HTTP's semantic conventions name, as the
        caller gives them (the caller scrubs the path); never a header or the body."""
        parent = parse_traceparent(traceparent)
        context = (
            trace.set_span_in_context(trace.NonRecordingSpan(parent))
            if parent is not None
            else otel_context.Context()
        )
        attributes: dict[str, OtelAttributeValue] = {
            "http.request.method": method,
            "http.route": route,
            "url.path": path,
            "url.scheme": scheme,
        }
        if user_agent:
            attributes["user_agent.original"] = redact_text(user_agent)
        span = self._tracer.start_span(
            f"{method} {route}", context=context, kind=trace.SpanKind.SERVER, attributes=attributes
        )
        return _current(span)
