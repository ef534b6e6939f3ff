"""``aioreconcile trace SHA``: find a commit's trace through Jaeger's HTTP query API and print it.

The search is a tag query on ``vcs.ref.head.revision`` (set on every commit root span, and on
the root of every heal back to that commit). Span names are low-cardinality (``apply
ConfigMap``); the tree shows each object again from the span's attributes, so what a user reads
is ``apply ConfigMap/shop/settings`` as before. Fetching is plain urllib (the CLI is synchronous
and makes one or two requests); everything after the fetch is pure and tested without Jaeger:
building the tree, formatting it, the JSON view.
"""

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, TypedDict

import orjson

from aioreconcile.engine.errors import AioreconcileError

DEFAULT_JAEGER_URL: Final = "http://127.0.0.1:16686"
REVISION_TAG: Final = "vcs.ref.head.revision"
TRIGGER_TAG: Final = "aioreconcile.trigger"  # only on the root of a commit reconcile
_FULL_SHA_LENGTHS: Final = (40, 64)


class JaegerUnreachable(AioreconcileError):
    """Jaeger's query API did not answer, or answered with an error."""


class JaegerTag(TypedDict):
    key: str
    type: str
    value: Any


class JaegerReference(TypedDict):
    refType: str  # "CHILD_OF" | "FOLLOWS_FROM"
    traceID: str
    spanID: str


class JaegerSpan(TypedDict):
    traceID: str
    spanID: str
    operationName: str
    references: list[JaegerReference]
    startTime: int  # microseconds since the epoch
    duration: int  # microseconds
    tags: list[JaegerTag]


class JaegerTrace(TypedDict):
    traceID: str
    spans: list[JaegerSpan]


@dataclass(frozen=True)
class SpanRow:
    """One line of the tree: a span at its depth, with what a reader looks for."""

    depth: int
    span_id: str
    parent_id: str | None
    name: str  # what a reader looks for: the operation, with the object it is about
    operation: str  # the span's name as exported (``apply ConfigMap``)
    action: str | None
    duration_ms: float
    error: str | None  # the status description ("" when ERROR without one); None when fine
    linked_traces: tuple[str, ...]  # trace ids this span links to (a heal's commit trace)


def trace_url(query_url: str, trace_id: str) -> str:
    return f"{query_url.rstrip('/')}/trace/{trace_id}"


_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def lookback_seconds(lookback: str) -> float:
    """``90s``, ``30m``, ``1h``, ``2d``, ``1w`` (or plain seconds) as seconds."""
    text = lookback.strip().lower()
    try:
        if text and text[-1] in _UNITS:
            seconds = float(text[:-1]) * _UNITS[text[-1]]
        else:
            seconds = float(text)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ValueError(f"lookback {lookback!r}: expected a duration like 30m, 1h or 2d")
    return seconds


def search_url(
    query_url: str,
    *,
    service: str,
    tags: Mapping[str, str] | None,
    lookback: str,
    limit: int,
    now: float | None = None,
) -> str:
    """The query API takes ``start``/``end`` in microseconds (``lookback`` is only the UI's
    name for it, and the API would otherwise search its default of two days)."""
    end = time.time() if now is None else now
    params = {
        "service": service,
        "limit": str(limit),
        "lookback": lookback,
        "start": str(int((end - lookback_seconds(lookback)) * 1e6)),
        "end": str(int(end * 1e6)),
    }
    if tags:
        params["tags"] = orjson.dumps(dict(tags)).decode()
    return f"{query_url.rstrip('/')}/api/traces?{urllib.parse.urlencode(params)}"


def _get_traces(url: str, *, timeout: float) -> list[JaegerTrace]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            document = orjson.loads(response.read())
    except urllib.error.HTTPError as e:
        raise JaegerUnreachable(f"{url}: HTTP {e.code} {e.reason}") from e
    except (OSError, ValueError) as e:
        raise JaegerUnreachable(f"{url}: {e}") from e
    traces: list[JaegerTrace] = document.get("data") or []
    return traces


def find_commit_traces(
    query_url: str,
    sha: str,
    *,
    service: str = "aioreconcile",
    lookback: str = "7d",
    limit: int = 20,
    timeout: float = 10.0,
) -> list[JaegerTrace]:
    """Every trace of ``service`` whose spans carry ``vcs.ref.head.revision == sha``, newest
    first. A short SHA cannot be a tag query; it is matched as a prefix over recent traces."""
    tagged = _get_traces(
        search_url(
            query_url,
            service=service,
            tags={REVISION_TAG: sha},
            lookback=lookback,
            limit=limit,
        ),
        timeout=timeout,
    )
    if not tagged and len(sha) not in _FULL_SHA_LENGTHS:
        recent = _get_traces(
            search_url(query_url, service=service, tags=None, lookback=lookback, limit=limit),
            timeout=timeout,
        )
        tagged = [t for t in recent if any(r.startswith(sha.lower()) for r in _revisions(t))]
    return sorted(tagged, key=_trace_start, reverse=True)


def is_commit_trace(trace: JaegerTrace) -> bool:
    """A commit reconcile's trace (its root says the trigger), not a heal back to that commit."""
    return any(tag["key"] == TRIGGER_TAG for span in trace["spans"] for tag in span["tags"])


def _revisions(trace: JaegerTrace) -> set[str]:
    return {
        str(tag["value"]).lower()
        for span in trace["spans"]
        for tag in span["tags"]
        if tag["key"] == REVISION_TAG
    }


def _trace_start(trace: JaegerTrace) -> int:
    return min((s["startTime"] for s in trace["spans"]), default=0)


def _tag(span: JaegerSpan, key: str) -> Any:
    for tag in span["tags"]:
        if tag["key"] == key:
            return tag["value"]
    return None


def display_name(span: JaegerSpan) -> str:
    """The operation with the object it is about, from the span's attributes: ``apply
    ConfigMap`` + ``shop``/``settings`` reads ``apply ConfigMap/shop/settings``, a heal root
    ``heal Deployment.apps/shop/web`` (its ``aioreconcile.object.ref``)."""
    operation = span["operationName"]
    verb = operation.split(" ", 1)[0]
    ref = _tag(span, "aioreconcile.object.ref")
    if ref is not None:
        return f"{verb} {ref}"
    kind, name = _tag(span, "aioreconcile.object.kind"), _tag(span, "aioreconcile.object.name")
    if kind is None or name is None:
        return operation
    namespace = _tag(span, "k8s.namespace.name")
    # A Namespace's own name is its k8s.namespace.name; it is no namespace it lives in.
    if kind == "Namespace" and _tag(span, "aioreconcile.object.api_version") == "v1":
        namespace = None
    return f"{verb} {kind}/{namespace}/{name}" if namespace else f"{verb} {kind}/{name}"


def _error_of(span: JaegerSpan) -> str | None:
    if _tag(span, "otel.status_code") == "ERROR" or _tag(span, "error") in (True, "true"):
        return str(_tag(span, "otel.status_description") or "")
    return None


def span_rows(trace: JaegerTrace) -> list[SpanRow]:
    """The spans of a trace in tree order (depth first, siblings by start time); a span whose
    parent is not in the trace (not exported, or from the webhook sender) counts as a root."""
    spans = {s["spanID"]: s for s in trace["spans"]}
    parents: dict[str, str | None] = {}
    for span in trace["spans"]:
        parent = next(
            (
                r["spanID"]
                for r in span["references"]
                if r["refType"] == "CHILD_OF" and r["traceID"] == span["traceID"]
            ),
            None,
        )
        parents[span["spanID"]] = parent if parent in spans else None
    children: dict[str | None, list[JaegerSpan]] = {}
    for span in trace["spans"]:
        children.setdefault(parents[span["spanID"]], []).append(span)
    for siblings in children.values():
        siblings.sort(key=lambda s: (s["startTime"], s["operationName"]))

    rows: list[SpanRow] = []
    stack: list[tuple[JaegerSpan, int]] = [(s, 0) for s in reversed(children.get(None, []))]
    while stack:
        span, depth = stack.pop()
        action = _tag(span, "aioreconcile.action")
        rows.append(
            SpanRow(
                depth=depth,
                span_id=span["spanID"],
                parent_id=parents[span["spanID"]],
                name=display_name(span),
                operation=span["operationName"],
                action=None if action is None else str(action),
                duration_ms=span["duration"] / 1000,
                error=_error_of(span),
                linked_traces=tuple(
                    r["traceID"]
                    for r in span["references"]
                    if r["refType"] == "FOLLOWS_FROM" or r["traceID"] != span["traceID"]
                ),
            )
        )
        stack.extend((child, depth + 1) for child in reversed(children.get(span["spanID"], [])))
    return rows


def format_tree(
    trace: JaegerTrace,
    *,
    query_url: str,
    others: Sequence[str] = (),
    heals: Sequence[str] = (),
) -> str:
    """What ``aioreconcile trace`` prints: the id, the UI URL, then one line per span."""
    rows = span_rows(trace)
    lines = [f"trace {trace['traceID']}", trace_url(query_url, trace["traceID"])]
    if others:
        lines.append(f"(also for this SHA, older: {', '.join(others)})")
    if heals:
        lines.append(f"(heals back to this SHA: {', '.join(heals)})")
    lines.append("")
    names = ["  " * r.depth + r.name for r in rows]
    name_width = max([len("SPAN"), *(len(n) for n in names)])
    action_width = max([len("ACTION"), *(len(r.action or "") for r in rows)])
    lines.append(f"{'SPAN'.ljust(name_width)}  {'ACTION'.ljust(action_width)}  {'DURATION':>11}")
    for row, name in zip(rows, names, strict=True):
        line = (
            f"{name.ljust(name_width)}  {(row.action or '').ljust(action_width)}  "
            f"{row.duration_ms:>8.1f} ms"
        )
        if row.error is not None:
            line += f"  ERROR{': ' + row.error if row.error else ''}"
        if row.linked_traces:
            line += f"  -> linked to trace {', '.join(row.linked_traces)}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def as_json(trace: JaegerTrace, *, query_url: str) -> dict[str, Any]:
    return {
        "trace_id": trace["traceID"],
        "url": trace_url(query_url, trace["traceID"]),
        "spans": [asdict(r) for r in span_rows(trace)],
    }
