"""One trace per commit, in the real Jaeger: pushed through the webhook, applied to the real
apiserver; a drift heal is its own trace, linked to the commit trace."""

import json
import logging
import secrets
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from aioreconcile.testing import Jaeger
from aioreconcile.testing.pytest_plugin import Kube
from tests.e2e.test_controller import SECRET, applied, config_map, controller
from tests.e2e.test_push_hints import counter
from tests.git.conftest import Upstream

pytestmark = [pytest.mark.integration, pytest.mark.jaeger]


def _query(jaeger: Jaeger, path: str, **params: str) -> list[dict[str, Any]]:
    url = f"{jaeger.query_url}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        data: list[dict[str, Any]] = json.loads(response.read())["data"] or []
        return data


async def _traces(jaeger: Jaeger, service: str, *, tags: dict[str, str]) -> list[dict[str, Any]]:
    return await anyio.to_thread.run_sync(
        lambda: _query(jaeger, "/api/traces", service=service, tags=json.dumps(tags), limit="50")
    )


async def _eventually(fetch: Callable[[], Any], *, seconds: float = 20) -> Any:
    with anyio.fail_after(seconds):
        while not (found := await fetch()):
            await anyio.sleep(0.2)
    return found


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span["tags"]}


def _parent(span: dict[str, Any]) -> str | None:
    return next(
        (r["spanID"] for r in span["references"] if r["refType"] == "CHILD_OF"),
        None,
    )


def _heal_root(trace: dict[str, Any]) -> dict[str, Any] | None:
    return next(
        (
            s
            for s in trace["spans"]
            if s["operationName"].startswith("heal ") and _parent(s) is None
        ),
        None,
    )


async def test_a_pushed_commit_is_one_trace_and_a_heal_links_back_to_it(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    jaeger: Jaeger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = f"aioreconcile-e2e-{secrets.token_hex(3)}"
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp_http_endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", service)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    repo = upstream("traced")
    names = [f"cm-{i}" for i in range(5)]

    def objects(value: str) -> dict[str, str]:
        docs = [config_map(name, namespace, v=value) for name in names]
        return {"deploy/objects.yaml": yaml.safe_dump_all(docs)}

    first = repo.commit(objects("1"))
    async with controller(kube, namespace, repo, git_daemon, tmp_path) as running:
        await running.wait_for(lambda: applied(running, first))
        second = repo.commit(objects("2"), message="bump every value")
        await running.push_webhook(second, before=first)
        await running.wait_for(lambda: applied(running, second))

        async def complete_commit_traces() -> list[dict[str, Any]]:
            # Spans arrive in batches; the root ends (and is exported) last.
            found = await _traces(jaeger, service, tags={"vcs.ref.head.revision": second})
            names = [{s["operationName"] for s in t["spans"]} for t in found]
            return found if any("reconcile app" in n for n in names) else []

        traces = await _eventually(complete_commit_traces)
        (trace,) = traces
        spans = {span["operationName"]: span for span in trace["spans"]}
        root = spans["reconcile app"]
        object_spans = [s for s in trace["spans"] if s["operationName"] == "apply ConfigMap"]
        assert _tags(root)["vcs.ref.head.revision"] == second
        assert _tags(root)["aioreconcile.commit.short_sha"] == second[:7]
        assert _tags(root)["aioreconcile.trigger"] == "push"
        assert _tags(root)["aioreconcile.commit.subject"] == "bump every value"
        assert _tags(root)["aioreconcile.objects.configured"] == 5
        assert _tags(root)["aioreconcile.reason"] == "ReconciliationSucceeded"
        children = {s["operationName"] for s in trace["spans"] if _parent(s) == root["spanID"]}
        assert {
            "git fetch",
            "render",
            "apply",
            "inventory read",
            "inventory write",
            "watch sync",
            "status update",
            "after reconcile",
        } <= children
        assert "apply namespaced" in spans
        assert len(object_spans) == 5
        assert {_tags(s)["aioreconcile.action"] for s in object_spans} == {"configured"}
        assert {_tags(s)["aioreconcile.object.name"] for s in object_spans} == set(names)
        # GitHub sends no traceparent: the reconcile is the root Jaeger's search list shows (it
        # read "POST /hooks/{name}" for every push), a CONSUMER linked to the webhook request,
        # which is a short SERVER trace of its own.
        assert _parent(root) is None
        assert "POST /hooks/{name}" not in spans
        assert _tags(root)["span.kind"] == "consumer"
        assert _tags(root)["aioreconcile.push.hinted_revision"] == second
        webhook_trace = _tags(root)["aioreconcile.webhook.trace_id"]
        assert webhook_trace != trace["traceID"]
        assert webhook_trace in {r["traceID"] for r in root["references"]}
        (requested,) = await anyio.to_thread.run_sync(
            lambda: _query(jaeger, f"/api/traces/{webhook_trace}")
        )
        (request,) = requested["spans"]
        assert request["operationName"] == "POST /hooks/{name}"
        assert _parent(request) is None
        assert _tags(request)["span.kind"] == "server"
        assert _tags(request)["http.response.status_code"] == 202
        assert _tags(request)["url.path"] == "/hooks/github"
        # What the search list shows of a trace: its root's operation, found by the SHA.
        searched = await anyio.to_thread.run_sync(
            lambda: _query(
                jaeger,
                "/api/traces",
                service=service,
                tags=json.dumps({"vcs.ref.head.revision": second}),
            )
        )
        listed = [[s["operationName"] for s in t["spans"] if _parent(s) is None] for t in searched]
        assert listed == [["reconcile app"]]

        # A replay of an old delivery only looks at the ref; its head is applied already, so no
        # trace is made that `aioreconcile trace` could take for either commit's deployment.
        await running.push_webhook(first)

        async def looked() -> bool:
            metrics = await running.metrics()
            return (
                counter(metrics, "aioreconcile_push_hints_total", sync="app", hint="not-head") > 0
            )

        await running.wait_for(looked)
        await anyio.sleep(0.5)  # five export periods
        for sha in (first, second):
            found = await _traces(jaeger, service, tags={"vcs.ref.head.revision": sha})
            roots = [s for t in found for s in t["spans"] if s["operationName"] == "reconcile app"]
            assert len(roots) == 1, sha

        # The object names the commit trace; a heal is a new trace linked to it.
        stored = await running.core.read_namespaced_config_map("cm-0", namespace)
        traceparent = stored.metadata.annotations["aioreconcile.dev/traceparent"]
        assert traceparent.split("-")[1] == trace["traceID"]
        await running.core.patch_namespaced_config_map(
            "cm-0", namespace, {"data": {"v": "edited"}}, field_manager="intruder"
        )

        async def heal_traces() -> list[dict[str, Any]]:
            # A heal carries the revision it heals back to: the SHA's search finds it too.
            found = await _traces(jaeger, service, tags={"vcs.ref.head.revision": second})
            return [t for t in found if _heal_root(t) is not None]

        (heal,) = await _eventually(heal_traces)
        heal_root = _heal_root(heal)
        assert heal_root is not None
        healed = _tags(heal_root)
        assert heal_root["operationName"] == "heal ConfigMap"
        assert healed["aioreconcile.object.ref"] == f"ConfigMap/{namespace}/cm-0"
        assert healed["vcs.ref.head.revision"] == second
        assert healed["vcs.repository.url.full"] == running.url
        assert healed["aioreconcile.commit.trace_id"] == trace["traceID"]
        assert "apply ConfigMap" in {s["operationName"] for s in heal["spans"]}
        assert heal["traceID"] != trace["traceID"]
        assert trace["traceID"] in {ref["traceID"] for ref in heal_root["references"]}
        assert "intruder" in json.dumps(healed)

        # `aioreconcile trace` shows the commit trace, each object by name, and names the heal.
        shown = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [
                    *(sys.executable, "-m", "aioreconcile.cli", "trace", second),
                    *("--jaeger", jaeger.query_url, "--service", service),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        )
        assert shown.returncode == 0, shown.stderr
        assert f"trace {trace['traceID']}" in shown.stdout
        for name in names:
            assert f"apply ConfigMap/{namespace}/{name}  configured" in shown.stdout
        assert f"(heals back to this SHA: {heal['traceID']})" in shown.stdout
        tree = shown.stdout.splitlines()
        (header,) = [i for i, line in enumerate(tree) if line.startswith("SPAN ")]
        assert tree[header + 1].startswith("reconcile app ")
        assert f"-> linked to trace {webhook_trace}" in tree[header + 1]

    everything = await anyio.to_thread.run_sync(
        lambda: _query(jaeger, "/api/traces", service=service, limit="100")
    )
    assert SECRET not in json.dumps(everything)


async def test_a_ci_pipelines_traceparent_puts_the_deployment_in_the_pipelines_trace(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    jaeger: Jaeger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender that gives a W3C traceparent (a CI pipeline's step) gets the request span and,
    under it, the reconcile in its own trace; `aioreconcile trace` still prints the commit's
    tree (the pipeline's span is not ours: the request is the top of what Jaeger holds)."""
    service = f"aioreconcile-e2e-{secrets.token_hex(3)}"
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp_http_endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", service)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    pipeline_trace, pipeline_step = secrets.token_hex(16), secrets.token_hex(8)
    repo = upstream("pipeline")
    first = repo.commit({"deploy/objects.yaml": yaml.safe_dump(config_map("cm", namespace, v="1"))})
    async with controller(kube, namespace, repo, git_daemon, tmp_path) as running:
        await running.wait_for(lambda: applied(running, first))
        second = repo.commit(
            {"deploy/objects.yaml": yaml.safe_dump(config_map("cm", namespace, v="2"))}
        )
        response = await running.push_webhook(
            second, before=first, traceparent=f"00-{pipeline_trace}-{pipeline_step}-01"
        )
        assert response.status == 202
        await running.wait_for(lambda: applied(running, second))

        async def complete() -> list[dict[str, Any]]:
            found = await _traces(jaeger, service, tags={"vcs.ref.head.revision": second})
            names = [{s["operationName"] for s in t["spans"]} for t in found]
            return found if any("reconcile app" in n for n in names) else []

        (trace,) = await _eventually(complete)
        assert trace["traceID"] == pipeline_trace
        spans = {span["operationName"]: span for span in trace["spans"]}
        request, root = spans["POST /hooks/{name}"], spans["reconcile app"]
        assert _parent(request) == pipeline_step
        assert _parent(root) == request["spanID"]
        assert _tags(root)["span.kind"] == "consumer"
        assert "aioreconcile.webhook.trace_id" not in _tags(root)

        shown = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [
                    *(sys.executable, "-m", "aioreconcile.cli", "trace", second),
                    *("--jaeger", jaeger.query_url, "--service", service),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        )
        assert shown.returncode == 0, shown.stderr
        assert f"trace {pipeline_trace}" in shown.stdout
        tree = shown.stdout.splitlines()
        (header,) = [i for i, line in enumerate(tree) if line.startswith("SPAN ")]
        assert tree[header + 1].startswith("POST /hooks/{name} ")
        assert tree[header + 2].startswith("  reconcile app ")
        assert f"      apply ConfigMap/{namespace}/cm  configured" in shown.stdout


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def only(self, message: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage() == message]


async def test_every_log_line_carries_the_trace_of_the_work_it_describes_or_none(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    jaeger: Jaeger,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 15: the watch task kept the first poll's trace context, so "drift detected" carried
    that old commit's trace id, and "drift healed" carried none. Detection happens in the watch
    task, before any heal exists: no trace. The heal's lines carry the heal's trace."""
    service = f"aioreconcile-e2e-{secrets.token_hex(3)}"
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp_http_endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", service)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    caplog.set_level(logging.INFO, logger="aioreconcile")
    records = _Records()
    logging.getLogger().addHandler(records)  # before the controller installs correlation
    repo = upstream("correlated")
    first = repo.commit({"deploy/objects.yaml": yaml.safe_dump(config_map("cm", namespace, v="1"))})
    try:
        async with controller(kube, namespace, repo, git_daemon, tmp_path) as running:
            await running.wait_for(lambda: applied(running, first))
            stored = await running.core.read_namespaced_config_map("cm", namespace)
            commit_trace = stored.metadata.annotations["aioreconcile.dev/traceparent"].split("-")[1]
            await running.core.patch_namespaced_config_map(
                "cm", namespace, {"data": {"v": "edited"}}, field_manager="intruder"
            )

            async def healed() -> bool:
                cm = await running.core.read_namespaced_config_map("cm", namespace)
                return bool(cm.data == {"v": "1"}) and bool(records.only("drift healed"))

            await running.wait_for(healed)

            async def heal_traces() -> list[dict[str, Any]]:
                found = await _traces(jaeger, service, tags={"aioreconcile.sync": "app"})
                return [t for t in found if _heal_root(t) is not None]

            (heal,) = await _eventually(heal_traces)
    finally:
        logging.getLogger().removeHandler(records)

    (reconciled,) = records.only("reconciled")
    assert getattr(reconciled, "trace_id", None) == commit_trace
    detected = records.only("drift detected")
    assert detected
    assert {getattr(r, "trace_id", None) for r in detected} == {None}
    (heal_line,) = records.only("drift healed")
    assert getattr(heal_line, "trace_id", None) == heal["traceID"]
    assert heal["traceID"] != commit_trace
