"""The demo's events are the controller's own log lines read back, never recomputed."""

from datetime import UTC, datetime

import orjson
import pytest

from aioreconcile.demo.events import (
    CommitApplied,
    CommitFailed,
    DriftHealed,
    LogReader,
    trace_id_of,
)

SHA = "5f70f3a" + "0" * 33
TRACE = "93f7cb9d521fe7a4530625aa4df91fda"


def line(message: str, at: str, **extra: object) -> str:
    return orjson.dumps({"time": f"2026-12-01T05:48:{at}Z", "message": message, **extra}).decode()


def test_a_pushed_commit_carries_counts_latency_and_trace() -> None:
    reader = LogReader()
    assert (
        reader.feed(
            line(f"webhook push x refs/heads/main@{SHA} triggers ['demo']", "08.000", sha=SHA)
        )
        == []
    )

    (event,) = reader.feed(
        line(
            "reconciled",
            "08.260",
            revision=SHA,
            totals={"configured": 2, "unchanged": 3, "deleted": 1},
            trace_id=TRACE,
        )
    )

    assert event == CommitApplied(
        sha=SHA,
        created=0,
        configured=2,
        pruned=1,
        unchanged=3,
        latency_ms=260.0,
        trace_id=TRACE,
        at=datetime(2026, 12, 1, 5, 48, 8, 260000, tzinfo=UTC),
    )


def test_a_polled_commit_has_no_webhook_latency() -> None:
    (event,) = LogReader().feed(line("reconciled", "01.000", revision=SHA, totals={"created": 5}))
    assert isinstance(event, CommitApplied)
    assert (event.created, event.latency_ms, event.trace_id) == (5, None, None)


def test_a_failed_render_is_a_failure_with_its_reason_and_nothing_pruned() -> None:
    (event,) = LogReader().feed(
        line(
            "reconcile failed",
            "13.000",
            revision=SHA,
            reason="RenderFailed",
            error="kubectl kustomize failed rendering overlays/demo: settings.yaml",
            totals={},
        )
    )
    assert isinstance(event, CommitFailed)
    assert (event.reason, event.pruned) == ("RenderFailed", 0)
    assert "settings.yaml" in event.error


def test_a_heal_names_writer_fields_and_links_the_commit_trace() -> None:
    reader = LogReader()
    target = "ConfigMap/demo/app-settings"
    reader.feed(line("drift detected", "11.000", object=target))

    (event,) = reader.feed(
        line(
            "drift healed",
            "11.030",
            object=target,
            writers=["kubectl-edit"],
            fields=["data.GREETING"],
            trace_id="a" * 32,
            linked_traceparent=f"00-{TRACE}-{'c' * 16}-01",
        )
    )

    assert isinstance(event, DriftHealed)
    assert event.writers == ("kubectl-edit",)
    assert event.fields == ("data.GREETING",)
    assert event.latency_ms == pytest.approx(30.0)
    assert (event.trace_id, event.linked_trace_id) == ("a" * 32, TRACE)


@pytest.mark.parametrize(
    "text",
    [
        "Traceback (most recent call last):",
        "--- starting controller: python -m aioreconcile run",
        "[1, 2]",
        line("drift healed", "00.000"),  # no object: not an event
        line("reconciled", "00.000"),  # no revision
    ],
)
def test_lines_that_are_not_events_are_skipped(text: str) -> None:
    assert LogReader().feed(text) == []


@pytest.mark.parametrize(
    ("traceparent", "expected"),
    [
        (f"00-{TRACE}-{'c' * 16}-01", TRACE),
        ("00-short-c-01", None),
        (None, None),
        ("garbage", None),
    ],
)
def test_trace_id_of_a_traceparent(traceparent: object, expected: str | None) -> None:
    assert trace_id_of(traceparent) == expected
