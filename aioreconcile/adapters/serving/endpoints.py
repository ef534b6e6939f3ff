"""Operational endpoints and the server lifecycle (aiohttp).

``/healthz`` answers while the process serves at all (liveness); ``/readyz`` once the controller
has started its queue and watches (readiness); ``/metrics`` is Prometheus text; ``/status`` is
the JSON view of every sync (last applied and attempted revision, result, error, inventory size,
drift heals) that ``aioreconcile status`` prints.
"""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import orjson
from aiohttp import web

_STATUS: web.AppKey[Callable[[], object]] = web.AppKey("status")
_METRICS: web.AppKey[Callable[[], str]] = web.AppKey("metrics")
_READY: web.AppKey[Callable[[], bool]] = web.AppKey("ready")


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    if request.app[_READY]():
        return web.Response(text="ok\n")
    return web.Response(status=503, text="starting\n")


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[_METRICS](),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def _status(request: web.Request) -> web.Response:
    body = orjson.dumps(request.app[_STATUS](), option=orjson.OPT_INDENT_2)
    return web.Response(body=body, content_type="application/json")


def add_operational_routes(
    app: web.Application,
    *,
    status: Callable[[], object],
    metrics: Callable[[], str],
    ready: Callable[[], bool],
) -> web.Application:
    app[_STATUS], app[_METRICS], app[_READY] = status, metrics, ready
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/status", _status)
    return app


@asynccontextmanager
async def serve(
    app: web.Application, *, host: str, port: int, shutdown_timeout_s: float = 5.0
) -> AsyncIterator[int]:
    """Serve ``app`` on host:port (0 picks a free port) and yield the bound port. On exit the
    listener closes first, so no new webhook is accepted while in-flight work drains."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        server = site._server  # aiohttp keeps the bound sockets here
        sockets = getattr(server, "sockets", None) or []
        yield sockets[0].getsockname()[1] if sockets else port
    finally:
        await runner.cleanup()
