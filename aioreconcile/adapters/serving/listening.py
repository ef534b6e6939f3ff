"""The HTTP listeners and what bounds them: a webhook port faces the internet, so a slow or
hostile client must not be able to hold memory, file descriptors or log lines.

aiohttp alone reads request headers for as long as the client keeps the connection open (its
keep-alive timer is an hour by default), answers malformed requests in plain text and logs the
parser's exception - which quotes the offending request bytes - at ERROR. Here, every
connection of a listener is served by :class:`_GuardedRequestHandler`:

- the head of a request (request line and headers) must arrive within ``header_timeout_s`` of
  the connection opening or of its first byte; otherwise the client gets ``408`` and the
  connection is closed (Go's ``http.Server.ReadHeaderTimeout``, nginx's
  ``client_header_timeout``); a body is bounded by the handler that reads it
  (``read_body``);
- at most ``max_connections`` connections are open at once; one more is closed as it opens, so
  stalled clients hold at most that many descriptors, each for at most the timeouts;
- aiohttp's own error answers (bad request line, headers too large, 404, 405...) are JSON of
  the same shape as the webhook's, and the failure is one DEBUG line naming the exception's
  type - never its message, which quotes the request.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

logger = logging.getLogger(__name__)

_STATUS_WORDS: Final = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    408: "request-timeout",
    413: "too-large",
    414: "uri-too-long",
    431: "headers-too-large",
}


@dataclass(frozen=True)
class ListenerLimits:
    """What one listener allows a client (see the module's docstring)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 15.0  # keep-alive: how long a connection may wait between requests
    linger_s: float = 2.0  # after answering early, how long to drain a body nobody reads
    max_connections: int = 256
    max_line_size: int = 8190
    max_field_size: int = 8190


def json_answer(
    http_status: int, status: str, reason: str = "", triggered: Sequence[str] = ()
) -> web.Response:
    """Every answer of our listeners has this shape: ``{"status", "reason", "triggered"}``."""
    body = orjson.dumps({"status": status, "reason": reason, "triggered": list(triggered)})
    return web.Response(status=http_status, body=body, content_type="application/json")


def _status_word(http_status: int) -> str:
    if http_status in _STATUS_WORDS:
        return _STATUS_WORDS[http_status]
    return "error" if http_status >= 500 else "bad-request"


def _phrase(http_status: int) -> str:
    try:
        return HTTPStatus(http_status).phrase.lower()
    except ValueError:
        return "error"


def _raw_answer(http_status: int) -> bytes:
    """A complete ``Connection: close`` response, for when no request object exists yet."""
    body = orjson.dumps(
        {"status": _status_word(http_status), "reason": _phrase(http_status), "triggered": []}
    )
    head = (
        f"HTTP/1.1 {http_status} {HTTPStatus(http_status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The router's own 404/405 (and any HTTPException a handler raises) as JSON."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        answer = json_answer(e.status, _status_word(e.status), _phrase(e.status))
        for name in ("Allow",):
            if name in e.headers:
                answer.headers[name] = e.headers[name]
        return answer


class BodyTimeout(Exception):
    """The client did not send its announced body within the listener's body timeout."""


class ClientGone(Exception):
    """The client closed the connection before its body was complete."""


async def read_body(request: web.Request, cap: int, *, timeout_s: float) -> bytes | None:
    """At most ``cap`` bytes of body within ``timeout_s``; None when the sender sends more.

    Raises BodyTimeout when the body is not complete in time, ClientGone when the client
    disconnects half-way (neither is our failure: callers answer or log one line), and
    HTTPBadRequest when the body is malformed (a broken chunk).
    """
    if request.content_length is not None and request.content_length > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        # Most webhook bodies arrive with their head: then there is nothing to wait for.
        async with asyncio.timeout(None if request.content.is_eof() else timeout_s):
            while size <= cap:
                chunk = await request.content.read(cap + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except TimeoutError:
        if isinstance(request.protocol, _GuardedRequestHandler):
            request.protocol.close_after_answer()
        raise BodyTimeout from None
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        raise ClientGone from e
    except HttpProcessingError:
        # A broken chunk or a body shorter than announced: the client's fault, answered 400
        # like a malformed head, and the bytes are not quoted anywhere.
        raise web.HTTPBadRequest() from None
    if size > cap:
        return None
    return b"".join(chunks)


class _GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with a header deadline, a connection cap and quiet, JSON
    error answers (see the module's docstring)."""

    def __init__(self, manager: Server, *, limits: ListenerLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        if manager is not None and len(manager.connections) > self._limits.max_connections:
            logger.debug("connection refused: %d connections open", len(manager.connections))
            self.force_close()
            return
        self._arm_head_timer(started=False)

    def data_received(self, data: bytes) -> None:
        if data:
            if self._head_timer is None and self._waiting_for_head():
                self._arm_head_timer(started=True)
            else:
                self._head_started = True
        super().data_received(data)
        if self._messages and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def close_after_answer(self) -> None:
        """Close as soon as the answer is written, without draining the rest of the body (the
        client is too slow to send it)."""
        self._lingering_time = 0.0

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        """Between requests: the serving loop waits for the next head (the state aiohttp's own
        keep-alive check calls idle), not handling a request nor draining its body."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._request_in_progress

    def _arm_head_timer(self, *, started: bool) -> None:
        self._head_started = started
        self._head_timer = asyncio.get_running_loop().call_later(
            self._limits.header_timeout_s, self._head_timed_out
        )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self._messages or self._request_in_progress:
            return
        if self._head_started:
            logger.debug("request head not complete within %g s", self._limits.header_timeout_s)
            self.transport.write(_raw_answer(408))
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's error answer, as JSON and without quoting the request anywhere."""
        if status >= 500:
            logger.error("request answered %d: %s", status, type(exc).__name__, exc_info=exc)
        else:
            logger.debug("malformed request answered %d: %s", status, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error answer")
        answer = json_answer(status, _status_word(status), _phrase(status))
        answer.force_close()
        return answer


class _GuardedServer(Server):
    """aiohttp's Server whose connections are served by :class:`_GuardedRequestHandler`."""

    limits: ListenerLimits

    def __call__(self) -> RequestHandler:
        return _GuardedRequestHandler(self, limits=self.limits, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    def __init__(self, app: web.Application, *, limits: ListenerLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        # The very object aiohttp built (startup hooks run, app frozen), with one method
        # replaced: the factory of each connection's protocol.
        server.__class__ = _GuardedServer
        assert isinstance(server, _GuardedServer)
        server.limits = self._limits
        return server


@asynccontextmanager
async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    limits: ListenerLimits = ListenerLimits(),
    shutdown_timeout_s: float = 5.0,
) -> AsyncIterator[int]:
    """Serve ``app`` on host:port (0 picks a free port) within ``limits``; yield the bound port.
    On exit the listener closes first, so no new request is accepted while work drains."""
    runner = _Runner(
        app,
        limits=limits,
        access_log=None,
        shutdown_timeout=shutdown_timeout_s,
        keepalive_timeout=limits.idle_timeout_s,
        lingering_time=limits.linger_s,
        max_line_size=limits.max_line_size,
        max_field_size=limits.max_field_size,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        addresses = runner.addresses
        yield int(addresses[0][1]) if addresses else port
    finally:
        await runner.cleanup()
