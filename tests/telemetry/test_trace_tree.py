"""The span tree `aioreconcile trace` prints, from a Jaeger query API document (pure)."""

from typing import Any

import pytest

from aioreconcile.adapters.telemetry.jaeger_query import (
    JaegerSpan,
    JaegerTrace,
    as_json,
    format_tree,
    is_commit_trace,
    lookback_seconds,
    search_url,
    span_rows,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
QUERY = "http://127.0.0.1:16686/"


def span(
    span_id: str,
    name: str,
    *,
    parent: str | None = None,
    start: int = 0,
    duration_us: int = 1000,
    tags: dict[str, Any] | None = None,
    links: tuple[str, ...] = (),
) -> JaegerSpan:
    references = [{"refType": "CHILD_OF", "traceID": TRACE_ID, "spanID": parent}] if parent else []
    references += [
        {"refType": "FOLLOWS_FROM", "traceID": t, "spanID": "00f067aa0ba902b7"} for t in links
    ]
    return {
        "traceID": TRACE_ID,
        "spanID": span_id,
        "operationName": name,
        "references": references,  # type: ignore[typeddict-item]
        "startTime": 1_700_000_000_000_000 + start,
        "duration": duration_us,
        "tags": [{"key": k, "type": "string", "value": v} for k, v in (tags or {}).items()],
    }


def identity(kind: str, namespace: str, name: str, api_version: str = "v1") -> dict[str, Any]:
    """The attributes an object span carries (adapters.telemetry.tracing.object_attributes)."""
    return {
        "aioreconcile.object.kind": kind,
        "aioreconcile.object.name": name,
        "aioreconcile.object.api_version": api_version,
        "k8s.namespace.name": namespace,
    }


def commit_trace(*, named_by_object: bool = False) -> JaegerTrace:
    """A commit trace as Jaeger returns it. ``named_by_object``: as exported before issue 15
    (one operation per object, ``apply Deployment/shop/web``); else low-cardinality names
    (``apply Deployment``) with the object in the attributes. Both must read the same."""
    deployment, config_map = "apply Deployment/shop/web", "apply ConfigMap/shop/settings"
    deployment_tags: dict[str, Any] = {}
    config_map_tags: dict[str, Any] = {}
    if not named_by_object:
        deployment, config_map = "apply Deployment", "apply ConfigMap"
        deployment_tags = identity("Deployment", "shop", "web", "apps/v1")
        config_map_tags = identity("ConfigMap", "shop", "settings")
    # Deliberately out of order, as Jaeger returns them.
    return {
        "traceID": TRACE_ID,
        "spans": [
            span(
                "c3",
                deployment,
                parent="a1",
                start=300,
                duration_us=2500,
                tags={
                    "aioreconcile.action": "failed",
                    "otel.status_code": "ERROR",
                    "otel.status_description": "spec.replicas: Invalid value: -1",
                    **deployment_tags,
                },
            ),
            span("a1", "apply", parent="r0", start=200, duration_us=9000),
            span("r0", "reconcile shop", start=0, duration_us=15250, tags={"x": 1}),
            span("f1", "fetch", parent="r0", start=10, duration_us=150),
            span(
                "c1",
                config_map,
                parent="a1",
                start=250,
                tags={"aioreconcile.action": "created", **config_map_tags},
            ),
            span("orphan", "lost parent", parent="gone", start=99999),
        ],
    }


BEFORE_AND_AFTER = pytest.mark.parametrize(
    "named_by_object", [True, False], ids=["named-by-object", "low-cardinality"]
)


@BEFORE_AND_AFTER
def test_rows_follow_the_tree_depth_first_by_start_time(named_by_object: bool) -> None:
    rows = span_rows(commit_trace(named_by_object=named_by_object))
    assert [(r.depth, r.name) for r in rows] == [
        (0, "reconcile shop"),
        (1, "fetch"),
        (1, "apply"),
        (2, "apply ConfigMap/shop/settings"),
        (2, "apply Deployment/shop/web"),
        (0, "lost parent"),
    ]
    failed = rows[4]
    assert failed.action == "failed"
    assert failed.error == "spec.replicas: Invalid value: -1"
    assert failed.parent_id == "a1"
    assert rows[0].error is None
    assert rows[0].duration_ms == 15.25


@BEFORE_AND_AFTER
def test_tree_shows_id_url_actions_durations_and_errors(named_by_object: bool) -> None:
    text = format_tree(commit_trace(named_by_object=named_by_object), query_url=QUERY)
    assert text.splitlines() == [
        f"trace {TRACE_ID}",
        f"http://127.0.0.1:16686/trace/{TRACE_ID}",
        "",
        "SPAN                               ACTION      DURATION",
        "reconcile shop                                  15.2 ms",
        "  fetch                                          0.1 ms",
        "  apply                                          9.0 ms",
        "    apply ConfigMap/shop/settings  created       1.0 ms",
        "    apply Deployment/shop/web      failed        2.5 ms"
        "  ERROR: spec.replicas: Invalid value: -1",
        "lost parent                                      1.0 ms",
    ]


def test_tree_names_older_traces_and_links() -> None:
    linked = "0af7651916cd43dd8448eb211c80319c"
    heal: JaegerTrace = {
        "traceID": TRACE_ID,
        "spans": [
            span(
                "h0",
                "heal Deployment.apps/shop/web",
                links=(linked,),
                tags={"error": True},
            )
        ],
    }
    text = format_tree(heal, query_url=QUERY, others=["aaaa", "bbbb"])
    assert "(also for this SHA, older: aaaa, bbbb)" in text
    assert text.splitlines()[-1].endswith(f"ERROR  -> linked to trace {linked}")


def test_json_view() -> None:
    document = as_json(commit_trace(), query_url=QUERY)
    assert document["trace_id"] == TRACE_ID
    assert document["url"].endswith(f"/trace/{TRACE_ID}")
    assert document["spans"][3] == {
        "depth": 2,
        "span_id": "c1",
        "parent_id": "a1",
        "name": "apply ConfigMap/shop/settings",
        "operation": "apply ConfigMap",
        "action": "created",
        "duration_ms": 1.0,
        "error": None,
        "linked_traces": (),
    }


@pytest.mark.parametrize(
    ("operation", "tags", "shown"),
    [
        ("apply Namespace", identity("Namespace", "shop", "shop"), "apply Namespace/shop"),
        (
            "prune ClusterRole",
            {"aioreconcile.object.kind": "ClusterRole", "aioreconcile.object.name": "reader"},
            "prune ClusterRole/reader",
        ),
        (
            "heal Deployment",
            {
                **identity("Deployment", "shop", "web", "apps/v1"),
                "aioreconcile.object.ref": "Deployment.apps/shop/web",
            },
            "heal Deployment.apps/shop/web",
        ),
        ("git fetch", {"vcs.ref.head.revision": "abc"}, "git fetch"),
        ("heal Deployment.apps/shop/web", {}, "heal Deployment.apps/shop/web"),
    ],
)
def test_an_object_span_is_shown_with_its_object(
    operation: str, tags: dict[str, Any], shown: str
) -> None:
    (row,) = span_rows({"traceID": TRACE_ID, "spans": [span("s0", operation, tags=tags)]})
    assert (row.name, row.operation) == (shown, operation)


def test_a_heal_is_no_commit_trace() -> None:
    heal: JaegerTrace = {
        "traceID": TRACE_ID,
        "spans": [span("h0", "heal ConfigMap", tags={"vcs.ref.head.revision": "abc"})],
    }
    commit: JaegerTrace = {
        "traceID": TRACE_ID,
        "spans": [span("r0", "reconcile shop", tags={"aioreconcile.trigger": "push"})],
    }
    assert (is_commit_trace(commit), is_commit_trace(heal)) == (True, False)


def test_search_url_encodes_the_tag_query_and_the_time_window() -> None:
    url = search_url(
        QUERY,
        service="aioreconcile",
        tags={"vcs.ref.head.revision": "abc"},
        lookback="2d",
        limit=5,
        now=1_700_000_000.0,
    )
    assert url == (
        "http://127.0.0.1:16686/api/traces?service=aioreconcile&limit=5&lookback=2d"
        "&start=1699827200000000&end=1700000000000000"
        "&tags=%7B%22vcs.ref.head.revision%22%3A%22abc%22%7D"
    )


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800), ("600", 600)]
)
def test_lookback(text: str, seconds: float) -> None:
    assert lookback_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-1h", "0"])
def test_bad_lookback(text: str) -> None:
    with pytest.raises(ValueError, match="lookback"):
        lookback_seconds(text)
