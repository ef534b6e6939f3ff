"""Tracing set up from the standard OTel variables; nothing configured means no SDK work at all.

The runtime calls ``start_tracing(TracingSettings.from_environ(...))`` once, passes
``handle.tracing`` to the reactor and calls ``handle.shutdown()`` on exit, which flushes the
batch of spans still waiting. The TracerProvider is private (never the global one), so tests and
benchmarks can build several side by side.
"""

import importlib
import importlib.util
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import TracebackType
from typing import Final, Self
from urllib.parse import unquote

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)

from aioreconcile.adapters.telemetry.tracing import ObjectSpanEncoder, OtelTracing
from aioreconcile.engine.errors import AioreconcileError

HTTP_PROTOBUF: Final = "http/protobuf"
GRPC: Final = "grpc"
_GRPC_EXPORTER: Final = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
# A commit of thousands of objects ends thousands of spans at once; the SDK's default queue of
# 2048 would drop the tail of such a trace.
_MAX_QUEUE: Final = 32768
# Spans per OTLP request. The SDK's 512 split a 1,000-object commit (~1,015 spans, ~430 KB) into
# three POSTs, each ~0.5 ms of the exporter's ``requests`` machinery (proxy and .netrc lookups,
# header merging) and one wake-up of the batch thread in the middle of the commit; 4096 sends
# it in one, at the end of its trace (``TraceFlusher``), ~1.7 MB at most per request (the
# OpenTelemetry Collector accepts 20 MiB by default). ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` wins.
_MAX_BATCH: Final = 4096
_BATCH_VARIABLE: Final = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"


_log = logging.getLogger(__name__)
_FLUSH_TIMEOUT_MS: Final = 10_000


class TraceFlusher:
    """Exports the pending spans as soon as a commit trace has ended, from a thread of its own.

    The BatchSpanProcessor sends a partial batch only every ``OTEL_BSP_SCHEDULE_DELAY`` (5 s):
    the last spans of a commit waited that long, and ``aioreconcile trace SHA`` right after a
    push showed the trace with spans missing. ``TracerProvider.force_flush`` encodes and sends in
    the calling thread, so it must not run on the event loop; ``request`` only sets an event
    (safe from the loop and any thread), and requests that arrive while a flush runs are
    coalesced into one more flush: a storm of commits costs at most one flush after another,
    never one per commit. Like the OpenTelemetry Collector's batch processor flushing on
    ``timeout`` or size, but on the natural boundary we know: the end of a trace.
    """

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name="aioreconcile-trace-flush", daemon=True
        )
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._stopping:
                return
            self._wanted.clear()
            try:
                self._provider.force_flush(_FLUSH_TIMEOUT_MS)
            except Exception:  # an exporter failure must not end the flushing thread
                _log.exception("flushing the spans of an ended trace failed")

    def stop(self) -> None:
        self._stopping = True
        self._wanted.set()
        self._thread.join(timeout=_FLUSH_TIMEOUT_MS / 1000)


class TracingConfigError(AioreconcileError, ValueError):
    """A tracing variable has a value we cannot use; the message names the variable."""


@dataclass(frozen=True)
class TracingSettings:
    """Where spans go and how they are sampled, in plain data (from env, then CLI flags)."""

    endpoint: str | None = None  # OTLP base URL (http: "/v1/traces" is added) or grpc host:port
    protocol: str = HTTP_PROTOBUF
    service_name: str = "aioreconcile"
    sampler: str | None = None  # OTEL_TRACES_SAMPLER; None: parentbased_always_on
    sampler_arg: str | None = None  # OTEL_TRACES_SAMPLER_ARG (a ratio for *traceidratio)
    resource_attributes: str | None = None  # OTEL_RESOURCE_ATTRIBUTES, "k=v,k2=v2"
    traces_endpoint: str | None = None  # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, used verbatim
    disabled: bool = False  # OTEL_SDK_DISABLED=true

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, **overrides: str | bool | None
    ) -> "TracingSettings":
        """Read the standard variables; ``overrides`` (CLI flags) win, a None override is
        ignored so an absent flag falls back to the environment."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        resource_attributes = get("OTEL_RESOURCE_ATTRIBUTES")
        named_in_resource = parse_resource_attributes(resource_attributes).get(SERVICE_NAME)
        settings = cls(
            endpoint=get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            traces_endpoint=get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            protocol=(
                get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or HTTP_PROTOBUF
            ),
            service_name=get("OTEL_SERVICE_NAME") or named_in_resource or "aioreconcile",
            sampler=get("OTEL_TRACES_SAMPLER"),
            sampler_arg=get("OTEL_TRACES_SAMPLER_ARG"),
            resource_attributes=resource_attributes,
            disabled=(get("OTEL_SDK_DISABLED") or "").lower() == "true",
        )
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown tracing setting(s): {', '.join(sorted(unknown))}")
        given = {k: v for k, v in overrides.items() if v is not None}
        settings = replace(settings, **given)  # type: ignore[arg-type]
        settings.validate()
        return settings

    @property
    def enabled(self) -> bool:
        return not self.disabled and bool(self.endpoint or self.traces_endpoint)

    @property
    def exporter_endpoint(self) -> str | None:
        """What the exporter is given: the signal URL for http (base + ``/v1/traces`` as the
        OTLP spec says, unless the traces-specific URL was set), host:port for grpc."""
        if self.traces_endpoint:
            return self.traces_endpoint
        if self.endpoint is None:
            return None
        if self.protocol == GRPC:
            return self.endpoint
        return self.endpoint.rstrip("/") + "/v1/traces"

    def validate(self) -> None:
        if self.protocol not in (HTTP_PROTOBUF, GRPC):
            raise TracingConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={self.protocol!r} is not supported: "
                f"use {HTTP_PROTOBUF!r} (or {GRPC!r} with the grpc exporter installed)"
            )
        if self.protocol == GRPC and not _grpc_exporter_installed():
            raise TracingConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the package "
                "opentelemetry-exporter-otlp-proto-grpc, which is not installed; "
                f"install it or use {HTTP_PROTOBUF!r} (port 4318 on most collectors)"
            )
        build_sampler(self.sampler, self.sampler_arg)
        parse_resource_attributes(self.resource_attributes)


def _grpc_exporter_installed() -> bool:
    try:
        return importlib.util.find_spec(_GRPC_EXPORTER) is not None
    except ModuleNotFoundError:
        return False


def build_sampler(name: str | None, arg: str | None) -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER`` names; an unknown name is an error, not a silent
    fallback (a typo must not switch sampling off or on)."""
    fixed: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "parentbased_always_on": DEFAULT_ON,
        "parentbased_always_off": DEFAULT_OFF,
    }
    key = (name or "parentbased_always_on").lower()
    if key in fixed:
        return fixed[key]
    if key in ("traceidratio", "parentbased_traceidratio"):
        try:
            ratio = 1.0 if arg is None else float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise TracingConfigError(
                f"OTEL_TRACES_SAMPLER_ARG={arg!r}: expected a ratio between 0 and 1"
            )
        return TraceIdRatioBased(ratio) if key == "traceidratio" else ParentBasedTraceIdRatio(ratio)
    raise TracingConfigError(
        f"OTEL_TRACES_SAMPLER={name!r} is not one of: "
        f"{', '.join([*fixed, 'traceidratio', 'parentbased_traceidratio'])}"
    )


def parse_resource_attributes(value: str | None) -> dict[str, str]:
    """``k=v,k2=v2`` (values percent-decoded, as the spec says) into a dict."""
    result: dict[str, str] = {}
    for item in (value or "").split(","):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise TracingConfigError(
                f"OTEL_RESOURCE_ATTRIBUTES: expected key=value pairs, got {item.strip()!r}"
            )
        result[key.strip()] = unquote(raw.strip())
    return result


class TracingHandle:
    """What the runtime holds: ``tracing`` for the reactor, ``shutdown()`` on exit.

    ``shutdown`` blocks while the last batch is exported (bounded by the exporter's timeout);
    from async code call it through ``anyio.to_thread.run_sync``.
    """

    def __init__(
        self,
        tracing: OtelTracing | None,
        provider: TracerProvider | None = None,
        flusher: TraceFlusher | None = None,
    ) -> None:
        self.tracing = tracing
        self._provider = provider
        self._flusher = flusher

    @property
    def enabled(self) -> bool:
        return self._provider is not None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._provider.force_flush(timeout_millis) if self._provider else True

    def shutdown(self) -> None:
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def _exporter(settings: TracingSettings) -> SpanExporter:
    endpoint = settings.exporter_endpoint
    if settings.protocol == GRPC:
        module = importlib.import_module(_GRPC_EXPORTER)
        exporter: SpanExporter = module.OTLPSpanExporter(endpoint=endpoint)
        return exporter
    from aioreconcile.adapters.telemetry.otlp import FastOTLPSpanExporter

    return FastOTLPSpanExporter(endpoint=endpoint)


def _pre_encoder(exporter: SpanExporter, provider: TracerProvider) -> ObjectSpanEncoder | None:
    """Object spans written to OTLP on the event loop, for our OTLP/HTTP exporter only (the
    gRPC one, and a test's in-memory one, take ``ReadableSpan``s)."""
    from aioreconcile.adapters.telemetry.otlp import FastOTLPSpanExporter, PreEncoder

    if isinstance(exporter, FastOTLPSpanExporter) and exporter.takes_encoded:
        return PreEncoder(provider.resource, provider.id_generator.generate_span_id)
    return None


def start_tracing(
    settings: TracingSettings, *, exporter: SpanExporter | None = None
) -> TracingHandle:
    """Build the SDK when an endpoint is configured; otherwise ``handle.tracing`` is None (the
    caller uses the reactor's ``NoTracing``): no exporter import, no provider, no cost.

    ``exporter`` replaces the OTLP exporter (benchmarks and tests); it also enables tracing.
    """
    if not settings.enabled and exporter is None:
        return TracingHandle(None)
    settings.validate()
    resource = Resource.create(
        {
            **parse_resource_attributes(settings.resource_attributes),
            SERVICE_NAME: settings.service_name,
        }
    )
    provider = TracerProvider(
        sampler=build_sampler(settings.sampler, settings.sampler_arg),
        resource=resource,
        shutdown_on_exit=False,
    )
    exporter = exporter or _exporter(settings)
    processor = BatchSpanProcessor(
        exporter,
        max_queue_size=_MAX_QUEUE,
        # None: the SDK reads OTEL_BSP_MAX_EXPORT_BATCH_SIZE (and validates it)
        max_export_batch_size=None if os.environ.get(_BATCH_VARIABLE) else _MAX_BATCH,
    )
    provider.add_span_processor(processor)
    flusher = TraceFlusher(provider)
    tracing = OtelTracing(
        provider,
        trace_ended=flusher.request,
        span_processor=processor,
        encode_objects=_pre_encoder(exporter, provider),
    )
    return TracingHandle(tracing, provider, flusher)
