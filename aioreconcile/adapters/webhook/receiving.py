"""``POST /hooks/<receiver>``: read a capped body, verify, parse, match, enqueue, answer.

The handler never waits for git: it turns a delivery into ``Push`` triggers and hands them to
``enqueue`` (synchronous, non-blocking), so a provider gets its answer in milliseconds and never
times out and retries a push we already have. In CRD mode it hands them to ``record`` instead,
which writes each one on its Sync (one PATCH, bounded in time) before the answer, so that a 202
means the request is in the API server whichever replica took it (``reactor.requesting``).
Deciding what a delivery means is pure (``engine.webhooks``, ``engine.matching``); this module
only moves bytes.

Order of checks, each answered with its own status (see docs/webhooks.md): unknown receiver
404 -> body over the cap 413 (or not complete in time 408) -> signature 401 -> malformed
payload 400 -> ping 200 -> repeated delivery 200 -> nothing to do 202 -> not recorded 503 ->
triggered 202.

Every request is a SERVER span (``POST /hooks/{name}``) when tracing is on, with HTTP's
semantic-convention attributes and nothing of the headers or body. The pushes it triggers carry
that span's context: as the reconcile's parent when the sender gave a trace the request
continues (a CI pipeline), else as a link only, so the reconcile roots a trace of its own that a
backend lists as ``reconcile <sync>`` (docs/tracing.md says why).

Every string that came from the request and is printed (refs, event names, delivery ids, the
reasons quoting them) goes through ``engine.redaction.printable`` first; the body itself is
never logged nor echoed.
"""

import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from aiohttp import web

from aioreconcile.adapters.serving.listening import (
    BodyTimeout,
    ClientGone,
    ListenerLimits,
    json_answer,
    json_errors,
    read_body,
)
from aioreconcile.engine.config import ReceiverSpec, SyncSpec
from aioreconcile.engine.errors import AioreconcileError
from aioreconcile.engine.matching import normalise_repository_url, triggers_for
from aioreconcile.engine.redaction import printable
from aioreconcile.engine.triggers import Push, PushEvent, is_traceparent
from aioreconcile.engine.webhooks import (
    DeliveryKind,
    DeliveryLog,
    WebhookError,
    parse,
    signature_header,
    verify,
)

logger = logging.getLogger(__name__)

ROUTE = "/hooks/{name}"
_USER_AGENT_MAX = 256


class RequestSpan(Protocol):
    """An open span (``adapters.telemetry.tracing.OtelSpan`` satisfies it)."""

    def set_attributes(self, attributes: Mapping[str, str | int | Sequence[str]]) -> None: ...

    def record_error(self, message: str, *, error: BaseException | None = None) -> None: ...

    @property
    def traceparent(self) -> str | None: ...


class RequestTracing(Protocol):
    """Opens the SERVER span of a request (``adapters.telemetry.tracing.OtelTracing``)."""

    def request(
        self,
        *,
        method: str,
        route: str,
        path: str,
        scheme: str,
        user_agent: str | None,
        traceparent: str | None,
    ) -> AbstractContextManager[RequestSpan]: ...


class _NoSpan:
    def set_attributes(self, attributes: Mapping[str, str | int | Sequence[str]]) -> None:
        return None

    def record_error(self, message: str, *, error: BaseException | None = None) -> None:
        return None

    @property
    def traceparent(self) -> str | None:
        return None


class NoRequestTracing:
    """Tracing off: no span, and the sender's ``traceparent`` passes through to the pushes."""

    @contextmanager
    def _nothing(self) -> Iterator[RequestSpan]:
        yield _NoSpan()

    def request(
        self,
        *,
        method: str,
        route: str,
        path: str,
        scheme: str,
        user_agent: str | None,
        traceparent: str | None,
    ) -> AbstractContextManager[RequestSpan]:
        return self._nothing()


class SecretError(AioreconcileError):
    """A receiver has no usable secret: a configuration error, reported before serving."""


class Outcome(StrEnum):
    """The ``status`` field of every answer."""

    ACCEPTED = "accepted"
    IGNORED = "ignored"
    DUPLICATE = "duplicate"
    PONG = "pong"
    UNKNOWN_RECEIVER = "unknown-receiver"
    TOO_LARGE = "too-large"
    REQUEST_TIMEOUT = "request-timeout"
    UNAUTHORIZED = "unauthorized"
    MALFORMED = "malformed"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class _Receiver:
    spec: ReceiverSpec
    secret: bytes


@dataclass(frozen=True)
class _Hooks:
    receivers: dict[str, _Receiver]  # by route name; CRD mode changes it while serving
    syncs: Callable[[], Iterable[SyncSpec]]
    enqueue: Callable[[Push], None]
    record: Callable[[Sequence[Push]], Awaitable[None]] | None
    deliveries: DeliveryLog
    body_timeout_s: float
    tracing: RequestTracing


HOOKS = web.AppKey("hooks", _Hooks)


def load_secret(spec: ReceiverSpec, environ: Mapping[str, str] = os.environ) -> bytes:
    """The receiver's secret from ``secretEnv`` or ``secretFile`` (one trailing newline dropped,
    as ``echo`` and editors add one). Missing or empty is an error that names the receiver and
    where it looked, never the value."""
    if spec.secret_env:
        value = environ.get(spec.secret_env, "").encode()
        where = f"environment variable {spec.secret_env}"
    elif spec.secret_file:
        where = f"file {spec.secret_file}"
        try:
            value = Path(spec.secret_file).read_bytes()
        except OSError as e:
            raise SecretError(
                f"receiver {spec.name!r}: cannot read its secret from {where}: {e.strerror}"
            ) from None
    else:
        raise SecretError(
            f"receiver {spec.name!r} has no secret: set secretEnv or secretFile "
            "(a receiver without a secret would let anyone trigger a sync)"
        )
    value = value.removesuffix(b"\n").removesuffix(b"\r")
    if not value:
        raise SecretError(f"receiver {spec.name!r}: its secret in {where} is empty")
    return value


def build_app(
    receivers: Sequence[ReceiverSpec],
    *,
    secrets: Mapping[str, bytes],
    syncs: Callable[[], Iterable[SyncSpec]],
    enqueue: Callable[[Push], None],
    record: Callable[[Sequence[Push]], Awaitable[None]] | None = None,
    deliveries: DeliveryLog | None = None,
    body_timeout_s: float = ListenerLimits.body_timeout_s,
    tracing: RequestTracing | None = None,
) -> web.Application:
    """The aiohttp application serving ``POST /hooks/{name}`` for ``receivers`` (and nothing
    else: a 404 for any other path, as JSON).

    ``secrets`` maps receiver names to their secrets (``load_secret``); ``syncs`` is called per
    delivery so config reloads and CRD edits are seen at once; ``enqueue`` must not block;
    a body not complete within ``body_timeout_s`` is answered 408; ``tracing`` opens a SERVER
    span per request (none when omitted).
    """
    table: dict[str, _Receiver] = {}
    for spec in receivers:
        secret = secrets.get(spec.name)
        if not secret:
            raise SecretError(f"receiver {spec.name!r} has no secret")
        if spec.name in table:
            raise SecretError(f"receiver {spec.name!r} is defined twice")
        table[spec.name] = _Receiver(spec, secret)
    app = web.Application(middlewares=[json_errors])
    log = deliveries if deliveries is not None else DeliveryLog()  # an empty log is falsy
    app[HOOKS] = _Hooks(
        table, syncs, enqueue, record, log, body_timeout_s, tracing or NoRequestTracing()
    )
    app.router.add_post(ROUTE, _traced)
    return app


class LiveReceivers:
    """The receivers of a running app, changed as Receiver resources come and go (CRD mode).

    Keyed by the Receiver's ``namespace/name``: a rotated token moves its route (the route
    name is the digest of its path), and the old route stops answering at once."""

    def __init__(self, app: web.Application) -> None:
        self._table = app[HOOKS].receivers
        self._routes: dict[str, str] = {}  # namespace/name -> route name

    def serve(self, key: str, spec: ReceiverSpec, secret: bytes) -> None:
        if not secret:
            raise SecretError(f"receiver {key} has no secret")
        self.stop(key)
        self._table[spec.name] = _Receiver(spec, secret)
        self._routes[key] = spec.name

    def stop(self, key: str) -> None:
        route = self._routes.pop(key, None)
        if route is not None:
            self._table.pop(route, None)


def _answer(
    http_status: int, outcome: Outcome, reason: str = "", triggered: Sequence[str] = ()
) -> web.Response:
    return json_answer(http_status, outcome, printable(reason), triggered)


async def _traced(request: web.Request) -> web.Response:
    """``_handle`` inside the request's SERVER span: method, route, path, scheme, user agent
    and status code, as HTTP's semantic conventions name them. The path is exported only when
    it names a configured receiver (a receiver's name is configuration, not a secret); any
    other is shown as ``/hooks/REDACTED``, since a path can itself be the secret (a Receiver
    resource's path is derived from its token, docs/crds.md). 5xx is an error, 4xx is not (the
    conventions for SERVER spans)."""
    hooks = request.app[HOOKS]
    name = request.match_info["name"]
    known = name in hooks.receivers
    user_agent = request.headers.get("User-Agent")
    with hooks.tracing.request(
        method=request.method,
        route=ROUTE,
        path=f"/hooks/{name}" if known else "/hooks/REDACTED",
        scheme=request.scheme,
        user_agent=printable(user_agent[:_USER_AGENT_MAX]) if user_agent else None,
        traceparent=request.headers.get("traceparent"),
    ) as span:
        try:
            response: web.Response | web.HTTPException = await _handle(request, span)
        except web.HTTPException as e:
            response = e  # raised below, outside the span: a 4xx is no error of the span
        except Exception:
            span.set_attributes({"http.response.status_code": 500})
            raise  # the span records the exception; json_errors answers 500
        _responded(span, response.status)
    if isinstance(response, web.HTTPException):
        raise response
    return response


def _responded(span: RequestSpan, status: int) -> None:
    span.set_attributes({"http.response.status_code": status})
    if status >= 500:
        span.record_error(f"HTTP {status}")


async def _handle(request: web.Request, span: RequestSpan) -> web.Response:
    hooks = request.app[HOOKS]
    name = request.match_info["name"]
    receiver = hooks.receivers.get(name)
    if receiver is None:
        return _answer(404, Outcome.UNKNOWN_RECEIVER, "no such receiver")
    span.set_attributes({"aioreconcile.receiver": name})
    spec = receiver.spec
    log = {"receiver": spec.name, "provider": str(spec.provider)}
    try:
        body = await read_body(request, spec.max_body_bytes, timeout_s=hooks.body_timeout_s)
    except BodyTimeout:
        logger.warning("webhook body not complete within %g s", hooks.body_timeout_s, extra=log)
        answer = _answer(
            408, Outcome.REQUEST_TIMEOUT, f"body not complete within {hooks.body_timeout_s:g} s"
        )
        answer.force_close()
        return answer
    except ClientGone:
        logger.debug("webhook client disconnected before its body was complete", extra=log)
        raise web.HTTPBadRequest() from None  # nobody is there to read it
    if body is None:
        logger.warning("webhook body over %d bytes refused", spec.max_body_bytes, extra=log)
        return _answer(413, Outcome.TOO_LARGE, f"body over {spec.max_body_bytes} bytes")

    headers = request.headers
    if not verify(spec.provider, headers, body, receiver.secret):
        header = signature_header(spec.provider)
        logger.warning("webhook signature missing or invalid (%s)", header, extra=log)
        return _answer(401, Outcome.UNAUTHORIZED, f"signature missing or invalid ({header})")

    try:
        delivery = parse(spec.provider, headers, body)
    except WebhookError as e:
        logger.warning("webhook payload malformed: %s", printable(str(e)), extra=log)
        return _answer(400, Outcome.MALFORMED, str(e))
    log["delivery_id"] = printable(delivery.delivery_id)
    log["event"] = printable(delivery.event)

    if delivery.kind is DeliveryKind.PING:
        logger.info("webhook ping", extra=log)
        return _answer(200, Outcome.PONG, "ping received")
    if delivery.kind is DeliveryKind.IGNORED:
        logger.info("webhook ignored: %s", printable(delivery.reason), extra=log)
        return _answer(202, Outcome.IGNORED, delivery.reason)
    if hooks.deliveries.seen(spec.name, delivery.delivery_id):
        logger.info("webhook delivery repeated, ignored", extra=log)
        return _answer(200, Outcome.DUPLICATE, "delivery already received")

    try:
        parent, link = _trace_context(span.traceparent, headers.get("traceparent"))
        pushes, reason = _match(hooks, spec, delivery.pushes, parent, link, log)
        if hooks.record is not None:
            await hooks.record(pushes)
        else:
            for push in pushes:
                hooks.enqueue(push)
    except AioreconcileError as e:
        # Not recorded: the sender will retry, and the retry must not be taken for a duplicate.
        hooks.deliveries.forget(spec.name, delivery.delivery_id)
        logger.warning("webhook triggers could not be recorded: %s", printable(str(e)), extra=log)
        return _answer(503, Outcome.UNAVAILABLE, "could not record the request; retry later")
    except Exception:
        hooks.deliveries.forget(spec.name, delivery.delivery_id)
        logger.exception("webhook triggers could not be enqueued", extra=log)
        return _answer(503, Outcome.UNAVAILABLE, "could not enqueue; retry later")
    triggers = [push.sync for push in pushes]
    span.set_attributes({"aioreconcile.webhook.triggered": triggers})
    if not triggers:
        return _answer(202, Outcome.IGNORED, reason)
    return _answer(202, Outcome.ACCEPTED, reason, triggers)


def _match(
    hooks: _Hooks,
    receiver: ReceiverSpec,
    pushes: Sequence[PushEvent],
    parent: str | None,
    link: str | None,
    log: Mapping[str, str],
) -> tuple[list[Push], str]:
    """Match every pushed ref against the syncs as they are now that this receiver may
    trigger: one ``Push`` per triggered sync, and why the rest triggered nothing."""
    events = [
        replace(e, traceparent=parent, link_traceparent=link) if parent or link else e
        for e in pushes
    ]
    triggers, reasons = triggers_for(events, hooks.syncs(), receiver=receiver)
    triggered = [t.sync for t in triggers]
    for event in events:
        ref = printable(event.ref)
        logger.info(
            "webhook push %s %s@%s triggers %s",
            printable(normalise_repository_url(event.repository_urls[0])),
            ref,
            printable(event.after),
            triggered or printable("; ".join(reasons)),
            extra={**log, "ref": ref, "sha": printable(event.after)},
        )
    return triggers, "; ".join(reasons)


def _trace_context(request: str | None, sender: str | None) -> tuple[str | None, str | None]:
    """(parent, link) of the reconciles a request triggers, from the request span's W3C
    context and the sender's ``traceparent`` header.

    The request span continues the sender's trace when the header was valid (the tracing
    adapter decides; then both share the trace id): the reconciles are its children, so a CI
    pipeline that pushes shows the deployment in its own trace. Otherwise (no provider sends a
    ``traceparent``) each reconcile is a root that only links to the request: Jaeger lists a
    trace by its root, and a list where every push reads ``POST /hooks/{name}`` says nothing
    of which sync or commit it was. Without tracing there is no request span: a well-formed
    sender context passes through as the parent (and goes nowhere while tracing is off)."""
    if request is None:
        return (sender if sender is not None and is_traceparent(sender) else None), None
    if sender is not None and sender.strip().split("-")[1:2] == request.split("-")[1:2]:
        return request, None  # the same (random, 128-bit) trace id: the request continued it
    return None, request
