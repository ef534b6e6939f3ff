"""Operational endpoints, on their own listener (``--ops-listen``, loopback by default).

``/healthz`` answers while the process serves at all (liveness); ``/readyz`` once the controller
has started its queue and watches, or, as a standby under leader election, once its watches have
listed (readiness: a standby accepts webhooks, so it belongs behind the Service too);
``/metrics`` is Prometheus text; ``/status`` is the JSON view of every sync (last applied and
attempted revision, result, error, inventory size, drift heals) that ``aioreconcile status``
prints, and of the leadership (leader or standby, the holder seen). None of them is served on
the webhook listener, which is the one exposed to the internet (Argo CD and Flux keep metrics
and health on a port apart from their webhook receivers for the same reason).
"""

from collections.abc import Callable

import orjson
from aiohttp import web

from aioreconcile.adapters.serving.listening import json_errors

_STATUS: web.AppKey[Callable[[], object]] = web.AppKey("status")
_METRICS: web.AppKey[Callable[[], str]] = web.AppKey("metrics")
_READY: web.AppKey[Callable[[], bool]] = web.AppKey("ready")
_ROLE: web.AppKey[Callable[[], str] | None] = web.AppKey("role")


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    if request.app[_READY]():
        role = request.app[_ROLE]
        return web.Response(text="ok\n" if role is None else f"ok: {role()}\n")
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


def build_ops_app(
    *,
    status: Callable[[], object],
    metrics: Callable[[], str],
    ready: Callable[[], bool],
    role: Callable[[], str] | None = None,
) -> web.Application:
    """The application of the operational listener: GET /healthz, /readyz, /metrics, /status.
    With leader election, ``role`` ("leader" or "standby") is named in /readyz's answer."""
    app = web.Application(middlewares=[json_errors])
    app[_STATUS], app[_METRICS], app[_READY] = status, metrics, ready
    app[_ROLE] = role
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/status", _status)
    return app
