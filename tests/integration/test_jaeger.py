"""The real Jaeger receives OTLP and serves it back through its query API."""

import json
import urllib.request

import anyio
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from aioreconcile.testing import Jaeger

pytestmark = pytest.mark.jaeger


def _export_one_span(endpoint: str) -> str:
    provider = TracerProvider(resource=Resource.create({"service.name": "testenv-probe"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))
    )
    with provider.get_tracer("aioreconcile.tests").start_as_current_span("probe") as span:
        span.set_attribute("vcs.ref.head.revision", "0123abcd")
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()
    return trace_id


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


async def test_exported_span_can_be_read_back_from_query_api(jaeger: Jaeger) -> None:
    trace_id = await anyio.to_thread.run_sync(_export_one_span, jaeger.otlp_http_endpoint)

    with anyio.fail_after(20):
        while True:
            status, body = await anyio.to_thread.run_sync(
                _fetch, f"{jaeger.query_url}/api/traces/{trace_id}"
            )
            if status == 200 and json.loads(body).get("data"):
                break
            await anyio.sleep(0.1)

    (trace,) = json.loads(body)["data"]
    (span,) = trace["spans"]
    tags = {tag["key"]: tag["value"] for tag in span["tags"]}
    assert span["operationName"] == "probe"
    assert tags["vcs.ref.head.revision"] == "0123abcd"
    assert trace["processes"][span["processID"]]["serviceName"] == "testenv-probe"
