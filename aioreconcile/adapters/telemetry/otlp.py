"""OTLP/HTTP protobuf export with a span encoder written for our spans' shape.

The OpenTelemetry exporter encodes a span by building a protobuf message object per span, per
attribute and per attribute value (``KeyValue``, ``AnyValue``) and then serialising them: about
30 µs of a 1,000-object commit's ~52 µs per span (docs/tracing.md, "What it costs"). Here a span
is written straight to the protobuf wire format (the OTLP ``trace.proto`` field numbers), with the
encoded key of every attribute cached (our keys are a few dozen constants) and, for short string
values that repeat on every object span (kind, group, apiVersion, namespace, action), the whole
encoded ``KeyValue``. Resource and instrumentation scope, once per batch, and the rare parts of a
span (events, links) still go through the official encoder, so their semantics are the
library's. tests/telemetry/test_otlp_encoding.py decodes both encodings with the official
``ExportTraceServiceRequest`` and compares them field by field.

Object spans go further (``PreEncoder``): ``OtelTracing`` hands a stage's entries to it on the
event loop, and their spans are written straight from the ChangeSet entries, the identity
attributes of an object encoded once per object, into one queue item (``EncodedObjectSpans``)
that ``request`` copies into the batch: about a third of the CPU of making an ``ObjectSpan`` and
encoding it in the exporting thread (docs/tracing.md, "What it costs").

The HTTP transport (endpoint, ``OTEL_EXPORTER_OTLP_HEADERS``, TLS, compression, retries, the
exporter's self-metrics) stays the library's ``OTLPSpanExporter``; only ``export`` is replaced.
"""

import struct
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_instrumentation_scope,
    _encode_key_value,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import (
    _encode_events,
    _encode_links,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind

from aioreconcile.adapters.telemetry.tracing import (
    SCOPE,
    ObjectSpan,
    change_attributes,
    identity_attributes,
    object_span_name,
    object_span_times,
)
from aioreconcile.engine.changeset import ChangeSetEntry

_KIND: Final[Mapping[SpanKind, bytes]] = {
    # Span.kind (field 6, varint): OTLP's SpanKind numbers start at INTERNAL = 1.
    SpanKind.INTERNAL: b"\x30\x01",
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}
_INTERNAL: Final = _KIND[SpanKind.INTERNAL]
# Span.flags (field 16, fixed32): SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, | IS_REMOTE for a remote
# parent, as the official encoder sets them.
_FLAGS_LOCAL: Final = b"\x85\x01" + struct.pack("<I", 0x100)
_FLAGS_REMOTE: Final = b"\x85\x01" + struct.pack("<I", 0x300)
_PACK_FIXED64: Final = struct.Struct("<Q").pack
_PACK_DOUBLE: Final = struct.Struct("<d").pack
# Span.start_time_unix_nano (field 7) and end_time_unix_nano (field 8), fixed64 each, one call.
_PACK_TIMES: Final = struct.Struct("<BQBQ").pack
_STATUS_UNSET: Final = b"\x7a\x00"  # Span.status (field 15): an empty Status, as encoded
_CACHED_VALUE_MAX: Final = 40  # string values up to this length may be cached with their key
_CACHE_MAX: Final = 4096
# Values that differ on every span (a resourceVersion is new on every write): caching them
# would only fill the cache and evict the values that do repeat.
_UNIQUE_KEYS: Final = frozenset(
    {"aioreconcile.resource_version.before", "aioreconcile.resource_version.after"}
)


_SMALL: Final = tuple(bytes((i,)) for i in range(0x80))


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes | None:
    """The bytes of an ``AnyValue`` for the attribute types the SDK keeps; None for others."""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _length_delimited(b"\x0a", value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
    if isinstance(value, float):
        return b"\x21" + _PACK_DOUBLE(value)
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        items = []
        for item in value:
            encoded = _any_value(item)
            if encoded is None:
                return None
            items.append(_length_delimited(b"\x0a", encoded))
        return _length_delimited(b"\x2a", b"".join(items))
    return None


class SpanEncoder:
    """Spans to ``ExportTraceServiceRequest`` bytes; holds the caches, so keep one per
    exporter (used from the batch processor's thread and the flushing one, under the
    processor's export lock)."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self._pairs: dict[tuple[str, str], bytes] = {}
        self._names: dict[str, bytes] = {}
        # An object's identity attributes by (group, kind, namespace, name, version): as many
        # as objects, so bounded like the rest (a 1,000-object sync hits it on every commit).
        self._identities: dict[tuple[str, str, str, str, str], bytes] = {}
        # The spans of a batch are mostly of one trace and, for object spans, of one parent:
        # their encoded fields are kept from the span before.
        self._trace_id = -1
        self._trace_id_field = b""
        self._parent_id = -1
        self._parent_field = b""

    def _key_value(self, key: str, value: Any) -> bytes:
        if type(value) is str and len(value) <= _CACHED_VALUE_MAX and key not in _UNIQUE_KEYS:
            pair = self._pairs.get((key, value))
            if pair is None:
                if len(self._pairs) >= _CACHE_MAX:
                    self._pairs.clear()
                pair = self._pairs[(key, value)] = self._encode_key_value(key, value)
            return pair
        return self._encode_key_value(key, value)

    def _encode_key_value(self, key: str, value: Any) -> bytes:
        encoded_key = self._keys.get(key)
        if encoded_key is None:
            if len(self._keys) >= _CACHE_MAX:
                self._keys.clear()
            encoded_key = self._keys[key] = _length_delimited(b"\x0a", key.encode())
        if type(value) is str:
            encoded_value = value.encode()
            size = len(encoded_value)
            inner = len(encoded_key) + size + 4
            if inner < 0x80:  # every length a single byte: one formatting, no varints
                return b"\x4a%c%b\x12%c\x0a%c%b" % (
                    inner,
                    encoded_key,
                    size + 2,
                    size,
                    encoded_value,
                )
            any_value = b"\x0a" + _varint(size) + encoded_value
            inner_value = encoded_key + b"\x12" + _varint(len(any_value)) + any_value
            return b"\x4a" + _varint(len(inner_value)) + inner_value
        encoded = _any_value(value)
        if encoded is None:  # bytes, mappings: whatever the official encoder makes of them
            return _length_delimited(b"\x4a", _encode_key_value(key, value).SerializeToString())
        return _length_delimited(b"\x4a", encoded_key + _length_delimited(b"\x12", encoded))

    def _name(self, name: str) -> bytes:
        field = self._names.get(name)
        if field is None:  # span names are low-cardinality (tracing.py): a few dozen
            if len(self._names) >= _CACHE_MAX:
                self._names.clear()
            field = self._names[name] = _length_delimited(b"\x2a", name.encode())
        return field

    def _object_attributes(self, entry: ChangeSetEntry) -> bytes:
        """``object_attributes(entry)`` encoded: the identity part once per object (the same
        objects are applied commit after commit), then what happened to it."""
        ref = entry.ref
        key = (ref.group, ref.kind, ref.namespace, ref.name, ref.version)
        identity = self._identities.get(key)
        if identity is None:
            if len(self._identities) >= _CACHE_MAX:
                self._identities.clear()
            encode = self._encode_key_value
            identity = self._identities[key] = b"".join(
                [encode(k, v) for k, v in identity_attributes(ref).items()]
            )
        key_value = self._key_value
        return identity + b"".join([key_value(k, v) for k, v in change_attributes(entry).items()])

    def object_spans(
        self,
        entries: Sequence[ChangeSetEntry],
        operation: str,
        parent: SpanContext,
        new_span_id: Callable[[], int],
        now: int,
    ) -> bytes:
        """The ``Span`` messages (each with its field tag, as ``ScopeSpans.spans``) of the object
        spans ``OtelTracing`` would make for ``entries`` (none FAILED: those keep their status
        and ``exception`` event through ``span``): the same fields ``span`` writes for such an
        ``ObjectSpan``, with what every span of a stage shares encoded once."""
        shared_head = b"\x0a\x10" + parent.trace_id.to_bytes(16, "big")
        state = b""
        if parent.trace_state:
            joined = ",".join(f"{k}={v}" for k, v in parent.trace_state.items())
            state = _length_delimited(b"\x1a", joined.encode())
        shared_parent = state + b"\x22\x08" + parent.span_id.to_bytes(8, "big")
        tail = _STATUS_UNSET + (_FLAGS_REMOTE if parent.is_remote else _FLAGS_LOCAL)
        name, object_attributes = self._name, self._object_attributes
        out = []
        for entry in entries:
            start, end = object_span_times(entry, now)
            body = b"".join(
                [
                    shared_head,
                    b"\x12\x08" + new_span_id().to_bytes(8, "big"),
                    shared_parent,
                    name(object_span_name(entry.ref, operation)),
                    _INTERNAL,
                    _PACK_TIMES(0x39, start, 0x41, end),
                    object_attributes(entry),
                    tail,
                ]
            )
            out.append(b"\x12" + _varint(len(body)) + body)
        return b"".join(out)

    def span(self, span: ReadableSpan) -> bytes:
        """One ``Span`` message (without its field tag)."""
        context = span.get_span_context()
        assert context is not None  # an SDK span always has one
        parent = span.parent
        trace_id = context.trace_id
        if trace_id != self._trace_id:
            self._trace_id_field = b"\x0a\x10" + trace_id.to_bytes(16, "big")
            self._trace_id = trace_id
        parts = [self._trace_id_field, b"\x12\x08" + context.span_id.to_bytes(8, "big")]
        if context.trace_state:
            state = ",".join(f"{k}={v}" for k, v in context.trace_state.items())
            parts.append(_length_delimited(b"\x1a", state.encode()))
        if parent is not None:
            parent_id = parent.span_id
            if parent_id != self._parent_id:
                self._parent_field = b"\x22\x08" + parent_id.to_bytes(8, "big")
                self._parent_id = parent_id
            parts.append(self._parent_field)
        parts.append(self._name(span.name))
        kind = span.kind
        parts.append(_INTERNAL if kind is SpanKind.INTERNAL else _KIND[kind])
        parts.append(_PACK_TIMES(0x39, span.start_time or 0, 0x41, span.end_time or 0))
        if type(span) is ObjectSpan:
            parts.append(self._object_attributes(span.entry))
        else:
            pairs, key_value = self._pairs, self._key_value
            for key, value in (span.attributes or {}).items():
                # The cache lookup inlined: most attributes of a stage span hit it.
                pair = pairs.get((key, value)) if type(value) is str else None
                parts.append(key_value(key, value) if pair is None else pair)
        if span.dropped_attributes:
            parts.append(b"\x50" + _varint(span.dropped_attributes))
        if span.events:
            for event in _encode_events(span.events) or ():
                parts.append(_length_delimited(b"\x5a", event.SerializeToString()))
        if span.dropped_events:
            parts.append(b"\x60" + _varint(span.dropped_events))
        if span.links:
            for link in _encode_links(span.links) or ():
                parts.append(_length_delimited(b"\x6a", link.SerializeToString()))
        if span.dropped_links:
            parts.append(b"\x70" + _varint(span.dropped_links))
        status = span.status
        if status.description or status.status_code.value:
            status_parts = []
            if status.description:
                status_parts.append(_length_delimited(b"\x12", status.description.encode()))
            if status.status_code.value:
                status_parts.append(b"\x18" + _varint(status.status_code.value))
            parts.append(_length_delimited(b"\x7a", b"".join(status_parts)))
        else:
            parts.append(_STATUS_UNSET)
        parts.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
        return b"".join(parts)

    def request(self, spans: Sequence[ReadableSpan]) -> bytes:
        """An ``ExportTraceServiceRequest``: spans grouped by resource, then by scope, in the
        order first seen (as the official encoder groups them)."""
        # By identity first: ``Resource.__hash__`` serialises its attributes to JSON, and every
        # span of a provider shares one Resource object.
        resources: dict[int, Resource] = {}
        canonical: dict[int, int] = {}  # id of a Resource -> id of the first one equal to it
        grouped: defaultdict[int, defaultdict[InstrumentationScope | None, list[bytes]]]
        grouped = defaultdict(lambda: defaultdict(list))
        for span in spans:
            resource = span.resource
            key = canonical.get(id(resource))
            if key is None:
                key = next((k for k, r in resources.items() if r == resource), id(resource))
                canonical[id(resource)] = key
                resources.setdefault(key, resource)
            scope_spans = grouped[key][span.instrumentation_scope or None]
            if type(span) is EncodedObjectSpans:
                scope_spans.append(span.data)  # already tagged Span messages
                continue
            encoded = self.span(span)
            scope_spans.append(b"\x12" + _varint(len(encoded)) + encoded)
        resource_spans = []
        for key, scopes in grouped.items():
            resource = resources[key]
            body = [_length_delimited(b"\x0a", _encode_resource(resource).SerializeToString())]
            for scope, encoded_spans in scopes.items():
                encoded_scope = (
                    b""
                    if scope is None
                    else _encode_instrumentation_scope(scope).SerializeToString()
                )
                scope_body = [_length_delimited(b"\x0a", encoded_scope), *encoded_spans]
                if scope is not None and scope.schema_url:
                    scope_body.append(_length_delimited(b"\x1a", scope.schema_url.encode()))
                body.append(_length_delimited(b"\x12", b"".join(scope_body)))
            if resource.schema_url:
                body.append(_length_delimited(b"\x1a", resource.schema_url.encode()))
            resource_spans.append(_length_delimited(b"\x0a", b"".join(body)))
        return b"".join(resource_spans)


class EncodedObjectSpans(ReadableSpan):
    """A run of object spans already in OTLP wire form: one item in the batch processor's queue
    instead of one ``ObjectSpan`` each. Only ``FastOTLPSpanExporter`` reads them (``data``:
    tagged ``Span`` messages; ``count``: how many); ``start_tracing`` makes them for it alone.

    Why: a 1,000-object commit's spans were 1,000 ``ObjectSpan``s (a ``ReadableSpan``, its
    ``SpanContext``, attributes), each queued by ``on_end`` and read back by the encoder in the
    exporting thread. They waited in the queue until the commit's end, so the collections of
    the reconcile's own work walked them, and the encoding ran in a second thread contending
    for the GIL. Written straight from the ChangeSet entries on the event loop, the same bytes
    cost a third of that (docs/tracing.md, "What it costs"), and bytes are never walked by
    the garbage collector. ``context`` is the parent's (sampled: the batch processor checks)."""

    def __init__(
        self,
        data: bytes,
        count: int,
        *,
        parent: SpanContext,
        resource: Resource,
        scope: InstrumentationScope,
    ) -> None:
        super().__init__(
            name="encoded object spans",
            context=parent,
            resource=resource,
            instrumentation_scope=scope,
        )
        self.data = data
        self.count = count


class PreEncoder:
    """``tracing.ObjectSpanEncoder`` for ``FastOTLPSpanExporter``: runs on the caller's thread
    (the event loop) with a ``SpanEncoder`` of its own, so its caches are never shared with the
    exporting thread's encoder."""

    def __init__(self, resource: Resource, new_span_id: Callable[[], int]) -> None:
        self._encoder = SpanEncoder()
        self._resource = resource
        self._new_span_id = new_span_id

    def __call__(
        self, entries: Sequence[ChangeSetEntry], operation: str, parent: SpanContext, now: int
    ) -> ReadableSpan:
        data = self._encoder.object_spans(entries, operation, parent, self._new_span_id, now)
        return EncodedObjectSpans(
            data, len(entries), parent=parent, resource=self._resource, scope=SCOPE
        )


class FastOTLPSpanExporter(OTLPSpanExporter):
    """``OTLPSpanExporter`` (OTLP/HTTP protobuf) whose batches are encoded by ``SpanEncoder``.

    It sends through the exporter's own HTTP client (``_client``, with ``_metrics`` and
    ``_shutdown``: private names of opentelemetry-exporter-otlp-proto-http 1.45); an exporter
    without them (another version) keeps its own ``export``, so an upgrade costs speed, never
    spans."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._encoder = SpanEncoder()
        self._fast = all(hasattr(self, name) for name in ("_client", "_metrics", "_shutdown"))

    @property
    def takes_encoded(self) -> bool:
        """Whether ``EncodedObjectSpans`` may be queued for it (its own ``export`` is used)."""
        return self._fast

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self._fast:
            return super().export(spans)
        if self._shutdown:
            return SpanExportResult.FAILURE
        count = sum(s.count if type(s) is EncodedObjectSpans else 1 for s in spans)
        with self._metrics.export_operation(count) as result:
            data = self._encoder.request(spans)
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
