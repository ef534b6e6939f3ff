"""A commit trace exported through the real OTLP pipeline into the real Jaeger, found again by
its revision tag, and shown by `aioreconcile trace`."""

import json
import secrets
import subprocess
import sys
import time
import urllib.request
from typing import Any

import anyio
import pytest

from aioreconcile.adapters.telemetry.jaeger_query import search_url
from aioreconcile.adapters.telemetry.setup import TracingSettings, start_tracing
from aioreconcile.cli import main
from aioreconcile.engine.changeset import Action, ChangeSetEntry
from aioreconcile.engine.model import ObjectRef
from aioreconcile.reactor.tracing import CommitInfo
from aioreconcile.testing import Jaeger

pytestmark = pytest.mark.jaeger

TOKEN = "glpat-n0t-f0r-y0ur-eyes"


def _emit_commit_trace(endpoint: str, *, service: str, sha: str) -> None:
    """What the reactor does for one push: root, fetch, apply with three objects; then flush."""
    handle = start_tracing(TracingSettings(endpoint=endpoint, service_name=service))
    tracing = handle.tracing
    assert tracing is not None
    began = time.time()
    entries = [
        ChangeSetEntry(
            ObjectRef("", "ConfigMap", "shop", "settings", "v1"),
            Action.CREATED,
            duration_s=0.004,
            resource_version_after="101",
            started_at=began,
        ),
        ChangeSetEntry(
            ObjectRef("apps", "Deployment", "shop", "web", "v1"),
            Action.CONFIGURED,
            duration_s=0.006,
            resource_version_before="90",
            resource_version_after="102",
            started_at=began + 0.001,
        ),
        ChangeSetEntry(
            ObjectRef("", "Service", "shop", "web", "v1"),
            Action.FAILED,
            error='Service "web" is invalid: spec.ports[0].port: Invalid value: 0',
            duration_s=0.002,
            started_at=began + 0.002,
        ),
    ]
    info = CommitInfo(
        sync="shop",
        repository_url=f"https://deploy-bot:{TOKEN}@git.example.com/acme/deploy.git",
        ref="main",
        ref_type="branch",
        sha=sha,
        author="Ada Lovelace <ada@example.com>",
        subject="Scale web to 3",
        trigger="push",
        started_at=began - 0.01,
    )
    with tracing.commit(info):
        with tracing.stage("fetch", {"aioreconcile.revision": sha}):
            time.sleep(0.002)
        with tracing.stage("apply", {"aioreconcile.objects": 3}) as apply:
            tracing.objects(entries, operation="apply")
            apply.record_error("1 object(s) failed to apply")
    handle.shutdown()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


async def _wait_for_traces(jaeger: Jaeger, *, service: str, sha: str) -> list[Any]:
    url = search_url(
        jaeger.query_url,
        service=service,
        tags={"vcs.ref.head.revision": sha},
        lookback="1h",
        limit=20,
    )
    with anyio.fail_after(20):
        while True:
            try:
                traces: list[Any] = (await anyio.to_thread.run_sync(_get, url)).get("data") or []
            except urllib.error.HTTPError:
                traces = []  # the service is unknown until its first span is stored
            # Spans of one trace may land in two batches; wait for all six.
            if traces and sum(len(t["spans"]) for t in traces) >= 6:
                return traces
            await anyio.sleep(0.1)


async def test_commit_trace_reaches_jaeger_and_the_trace_command_finds_it(
    jaeger: Jaeger,
) -> None:
    service = f"aioreconcile-test-{secrets.token_hex(3)}"
    sha = secrets.token_hex(20)
    await anyio.to_thread.run_sync(
        lambda: _emit_commit_trace(jaeger.otlp_http_endpoint, service=service, sha=sha)
    )
    traces = await _wait_for_traces(jaeger, service=service, sha=sha)

    (trace,) = traces
    spans = {s["operationName"]: s for s in trace["spans"]}
    assert sorted(spans) == [
        "apply",
        "apply ConfigMap",
        "apply Deployment",
        "apply Service",
        "fetch",
        "reconcile shop",
    ]
    actions = {
        name: tag["value"]
        for name, span in spans.items()
        for tag in span["tags"]
        if tag["key"] == "aioreconcile.action"
    }
    assert actions == {
        "apply ConfigMap": "created",
        "apply Deployment": "configured",
        "apply Service": "failed",
    }
    apply_id = spans["apply"]["spanID"]
    for name in actions:
        assert spans[name]["references"][0]["spanID"] == apply_id
    root_tags = {t["key"]: t["value"] for t in spans["reconcile shop"]["tags"]}
    assert root_tags["vcs.repository.url.full"] == "https://git.example.com/acme/deploy.git"
    failed_tags = {t["key"]: t["value"] for t in spans["apply Service"]["tags"]}
    assert failed_tags["otel.status_code"] == "ERROR"
    assert TOKEN not in json.dumps(trace)

    cli = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [
                sys.executable,
                "-m",
                "aioreconcile.cli",
                "trace",
                sha,
                "--jaeger",
                jaeger.query_url,
                "--service",
                service,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    )
    assert cli.returncode == 0, cli.stderr
    assert trace["traceID"] in cli.stdout
    assert f"{jaeger.query_url}/trace/{trace['traceID']}" in cli.stdout
    for shown in (
        "reconcile shop",
        "  fetch",
        "  apply",
        "    apply ConfigMap/shop/settings  created",
        "    apply Deployment/shop/web      configured",
        "    apply Service/shop/web         failed",
    ):
        assert shown in cli.stdout
    assert 'ERROR: Service "web" is invalid' in cli.stdout
    assert TOKEN not in cli.stdout


async def test_trace_command_says_when_nothing_matches(
    jaeger: Jaeger, capsys: pytest.CaptureFixture[str]
) -> None:
    service = f"aioreconcile-test-{secrets.token_hex(3)}"
    sha = secrets.token_hex(20)
    await anyio.to_thread.run_sync(
        lambda: _emit_commit_trace(jaeger.otlp_http_endpoint, service=service, sha=sha)
    )
    await _wait_for_traces(jaeger, service=service, sha=sha)
    code = await anyio.to_thread.run_sync(
        main, ["trace", "0" * 40, "--jaeger", jaeger.query_url, "--service", service]
    )
    assert code == 1
    assert "no trace" in capsys.readouterr().err

    short = await anyio.to_thread.run_sync(
        main, ["trace", sha[:10], "--jaeger", jaeger.query_url, "--service", service, "-o", "json"]
    )
    assert short == 0
    document = json.loads(capsys.readouterr().out)
    assert document["spans"][0]["name"] == "reconcile shop"


def test_trace_command_reports_an_unreachable_jaeger(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "abc", "--jaeger", "http://127.0.0.1:9"]) == 2
    assert "cannot query Jaeger" in capsys.readouterr().err


async def test_a_thousand_objects_make_a_handful_of_operations_in_jaeger(jaeger: Jaeger) -> None:
    """Issue 15 at the size it was seen: 1,000 objects of 3 kinds, applied, into the real Jaeger.
    Its operation list (the search page's Operation menu) has one entry per kind, not one per
    object, and `aioreconcile trace` still shows every object by name."""
    service = f"aioreconcile-test-{secrets.token_hex(3)}"
    sha = secrets.token_hex(20)
    kinds = [("", "ConfigMap"), ("apps", "Deployment"), ("", "Service")]
    began = time.time()
    entries = [
        ChangeSetEntry(
            ObjectRef(kinds[i % 3][0], kinds[i % 3][1], "shop", f"object-{i}", "v1"),
            Action.CREATED,
            duration_s=0.001,
            started_at=began + i / 1e4,
        )
        for i in range(1000)
    ]

    def emit() -> None:
        handle = start_tracing(
            TracingSettings(endpoint=jaeger.otlp_http_endpoint, service_name=service)
        )
        assert handle.tracing is not None
        info = CommitInfo(
            sync="shop",
            repository_url="https://git.example.com/acme/deploy.git",
            ref="main",
            ref_type="branch",
            sha=sha,
            trigger="poll",
        )
        with handle.tracing.commit(info), handle.tracing.stage("apply"):
            handle.tracing.objects(entries, operation="apply")
        handle.shutdown()

    await anyio.to_thread.run_sync(emit)
    url = search_url(
        jaeger.query_url,
        service=service,
        tags={"vcs.ref.head.revision": sha},
        lookback="1h",
        limit=5,
    )

    def stored() -> int:
        try:
            return sum(len(t["spans"]) for t in _get(url).get("data") or [])
        except urllib.error.HTTPError:
            return 0  # the service is unknown until its first span is stored

    with anyio.fail_after(30):
        while await anyio.to_thread.run_sync(stored) < 1002:
            await anyio.sleep(0.2)
    operations = await anyio.to_thread.run_sync(
        _get, f"{jaeger.query_url}/api/services/{service}/operations"
    )
    assert sorted(operations["data"]) == [
        "apply",
        "apply ConfigMap",
        "apply Deployment",
        "apply Service",
        "reconcile shop",
    ]

    cli = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [
                sys.executable,
                "-m",
                "aioreconcile.cli",
                "trace",
                sha,
                "--jaeger",
                jaeger.query_url,
                "--service",
                service,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    )
    assert cli.returncode == 0, cli.stderr
    shown = {line.split()[1] for line in cli.stdout.splitlines() if line.startswith("    apply ")}
    assert shown == {f"{kinds[i % 3][1]}/shop/object-{i}" for i in range(1000)}


async def test_a_commit_trace_is_whole_in_jaeger_soon_after_its_root_ends(jaeger: Jaeger) -> None:
    """The exporter's batch waits up to 5 s (``OTEL_BSP_SCHEDULE_DELAY``) before sending a
    partial batch: without a flush when the ``reconcile`` root ends, ``aioreconcile trace SHA``
    right after a push showed a trace with spans missing. With the handle still open (no
    shutdown, as in a running controller) the whole trace must be queryable well within that."""
    service = f"aioreconcile-test-{secrets.token_hex(3)}"
    sha = secrets.token_hex(20)
    handle = start_tracing(
        TracingSettings(endpoint=jaeger.otlp_http_endpoint, service_name=service)
    )
    try:
        tracing = handle.tracing
        assert tracing is not None
        began = time.time()
        entries = [
            ChangeSetEntry(
                ObjectRef("", "ConfigMap", "shop", f"cm-{i}", "v1"),
                Action.CONFIGURED,
                duration_s=0.001,
                started_at=began,
            )
            for i in range(20)
        ]
        info = CommitInfo(
            sync="shop",
            repository_url="https://git.example.com/acme/deploy.git",
            ref="main",
            ref_type="branch",
            sha=sha,
        )
        with tracing.commit(info), tracing.stage("apply"):
            tracing.objects(entries, operation="apply")
        ended = time.monotonic()
        url = search_url(
            jaeger.query_url,
            service=service,
            tags={"vcs.ref.head.revision": sha},
            lookback="1h",
            limit=5,
        )

        def stored() -> int:
            try:
                return sum(len(t["spans"]) for t in _get(url).get("data") or [])
            except urllib.error.HTTPError:
                return 0  # the service is unknown until its first span is stored

        with anyio.move_on_after(4):
            while await anyio.to_thread.run_sync(stored) < 22:
                await anyio.sleep(0.05)
        whole_after = time.monotonic() - ended
        assert await anyio.to_thread.run_sync(stored) == 22
        assert whole_after < 2.0, f"the trace was whole in Jaeger only after {whole_after:.2f} s"
    finally:
        await anyio.to_thread.run_sync(handle.shutdown)
