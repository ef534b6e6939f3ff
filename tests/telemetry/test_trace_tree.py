"""The span tree `aioreconcile trace` prints, from a Jaeger query API document (pure)."""

from typing import Any

import pytest

from aioreconcile.adapters.telemetry.jaeger_query import (
    JaegerSpan,
    JaegerTrace,
    as_json,
    format_tree,
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


def commit_trace() -> JaegerTrace:
    # Deliberately out of order, as Jaeger returns them.
    return {
        "traceID": TRACE_ID,
        "spans": [
            span(
                "c3",
                "apply Deployment/shop/web",
                parent="a1",
                start=300,
                duration_us=2500,
                tags={
                    "aioreconcile.action": "failed",
                    "otel.status_code": "ERROR",
                    "otel.status_description": "spec.replicas: Invalid value: -1",
                },
            ),
            span("a1", "apply", parent="r0", start=200, duration_us=9000),
            span("r0", "reconcile shop", start=0, duration_us=15250, tags={"x": 1}),
            span("f1", "fetch", parent="r0", start=10, duration_us=150),
            span(
                "c1",
                "apply ConfigMap/shop/settings",
                parent="a1",
                start=250,
                tags={"aioreconcile.action": "created"},
            ),
            span("orphan", "lost parent", parent="gone", start=99999),
        ],
    }


def test_rows_follow_the_tree_depth_first_by_start_time() -> None:
    rows = span_rows(commit_trace())
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


def test_tree_shows_id_url_actions_durations_and_errors() -> None:
    text = format_tree(commit_trace(), query_url=QUERY)
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
        "action": "created",
        "duration_ms": 1.0,
        "error": None,
        "linked_traces": (),
    }


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
