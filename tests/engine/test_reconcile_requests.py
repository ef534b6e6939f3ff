"""What a webhook's hand-off writes on a Sync and what the reconciling replica reads back: the
hinted commit is hostile input both ways (a payload's claim, an annotation anyone with `patch`
on Syncs can write), so only a full commit id passes; a requestedAt is copied into the status,
so only a short printable one is honoured."""

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from aioreconcile.engine.resources import (
    REQUEST_TRACE_ANNOTATION,
    REQUESTED_AT_ANNOTATION,
    REVISION_HINT_ANNOTATION,
    reconcile_request,
    request_trace,
    requested_at,
    revision_hint,
)

SHA1 = "0123456789abcdef0123456789abcdef01234567"
SHA256 = "ab" * 32
AT = datetime(2026, 12, 1, 9, 30, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("hint", "written"),
    [
        (SHA1, SHA1),
        (SHA256, SHA256),
        (None, None),  # no hint: the annotation is removed, never left from a former request
        (SHA1.upper(), None),  # not how Git servers send it
        (SHA1[:-1], None),  # short
        (SHA1 + "0", None),  # 41 digits
        ("g" * 40, None),
        (SHA1 + "\n" + SHA1, None),  # a forged second line
        ("main", None),
        ("", None),
        ("x" * 100_000, None),
    ],
)
def test_a_request_carries_the_hint_only_when_it_is_a_full_commit_id(
    hint: str | None, written: str | None
) -> None:
    patch = reconcile_request(AT, hint)
    assert patch == {
        "metadata": {
            "annotations": {
                REQUESTED_AT_ANNOTATION: "2026-12-01T09:30:00.000005+00:00",
                REVISION_HINT_ANNOTATION: written,
                REQUEST_TRACE_ANNOTATION: None,
            }
        }
    }


def test_two_requests_a_microsecond_apart_are_two_requests() -> None:
    first = reconcile_request(AT, SHA1)["metadata"]["annotations"][REQUESTED_AT_ANNOTATION]
    second = reconcile_request(AT + timedelta(microseconds=1), SHA1)["metadata"]["annotations"]
    assert second[REQUESTED_AT_ANNOTATION] != first


def test_the_request_time_keeps_its_offset() -> None:
    at = datetime(2026, 12, 1, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    value = reconcile_request(at, None)["metadata"]["annotations"][REQUESTED_AT_ANNOTATION]
    assert value == "2026-12-01T10:00:00.000000+01:00"


@pytest.mark.parametrize(
    ("annotations", "hint"),
    [
        ({REVISION_HINT_ANNOTATION: SHA1}, SHA1),
        ({REVISION_HINT_ANNOTATION: SHA256}, SHA256),
        ({REVISION_HINT_ANNOTATION: SHA1 + "\u2028"}, None),
        ({REVISION_HINT_ANNOTATION: "HEAD"}, None),
        ({REVISION_HINT_ANNOTATION: 40}, None),
        ({REVISION_HINT_ANNOTATION: None}, None),
        ({}, None),
        (None, None),
    ],
)
def test_only_a_full_commit_id_is_read_back_as_the_hint(
    annotations: dict[str, Any] | None, hint: str | None
) -> None:
    assert revision_hint(annotations) == hint


@pytest.mark.parametrize(
    ("value", "honoured"),
    [
        ("2026-12-01T09:30:00.000005+00:00", True),  # ours
        ("2026-12-01T09:30:00.123456789Z", True),  # flux reconcile's RFC 3339 nano
        ("one", True),  # kubectl annotate by hand: any new value
        ("x" * 256, True),
        ("x" * 257, False),
        ("", False),
        ("now\nLevel=ERROR forged", False),
        ("now\u2028forged", False),
        ("now\u202eforged", False),
        ("back\\slash", False),
        (42, False),
        (None, False),
    ],
)
def test_a_requested_at_is_honoured_only_when_short_and_printable(
    value: object, honoured: bool
) -> None:
    annotations = {REQUESTED_AT_ANNOTATION: value}
    assert requested_at(annotations) == (value if honoured else None)
    assert requested_at(None) is None


TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("traceparent", "written"),
    [
        (TRACE, TRACE),
        (None, None),
        (TRACE.upper(), None),
        (TRACE + "-extra", None),
        (TRACE + "\n" + TRACE, None),
        ("00-xyz-b7ad6b7169203331-01", None),
        ("x" * 10_000, None),
    ],
)
def test_the_request_span_is_written_and_read_back_only_in_the_w3c_shape(
    traceparent: str | None, written: str | None
) -> None:
    annotations = reconcile_request(AT, SHA1, traceparent=traceparent)["metadata"]["annotations"]
    assert annotations[REQUEST_TRACE_ANNOTATION] == written
    assert request_trace({REQUEST_TRACE_ANNOTATION: traceparent}) == written
