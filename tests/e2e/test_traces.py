"""One trace per commit, in the real Jaeger: pushed through the webhook, applied to the real
apiserver; a drift heal is its own trace, linked to the commit trace."""

import json
import secrets
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
        object_spans = [s for name, s in spans.items() if name.startswith("apply ConfigMap/")]
        assert _tags(root)["vcs.ref.head.revision"] == second
        assert _tags(root)["aioreconcile.trigger"] == "push"
        assert _tags(root)["aioreconcile.commit.subject"] == "bump every value"
        assert {"git fetch", "render", "apply", "apply namespaced"} <= set(spans)
        assert len(object_spans) == 5
        assert {_tags(s)["aioreconcile.action"] for s in object_spans} == {"configured"}
        assert _tags(root)["aioreconcile.push.hinted_revision"] == second

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
            found = await _traces(jaeger, service, tags={"aioreconcile.sync": "app"})
            return [
                t
                for t in found
                if any(s["operationName"] == f"heal ConfigMap/{namespace}/cm-0" for s in t["spans"])
            ]

        (heal,) = await _eventually(heal_traces)
        heal_root = next(
            s for s in heal["spans"] if not any(r["refType"] == "CHILD_OF" for r in s["references"])
        )
        assert heal_root["operationName"] == f"heal ConfigMap/{namespace}/cm-0"
        assert f"apply ConfigMap/{namespace}/cm-0" in {s["operationName"] for s in heal["spans"]}
        assert heal["traceID"] != trace["traceID"]
        assert trace["traceID"] in {ref["traceID"] for ref in heal_root["references"]}
        assert "intruder" in json.dumps(_tags(heal_root))

    everything = await anyio.to_thread.run_sync(
        lambda: _query(jaeger, "/api/traces", service=service, limit="100")
    )
    assert SECRET not in json.dumps(everything)
