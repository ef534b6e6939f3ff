"""Raw JSON requests to the API server over one aiohttp session.

The generated kubernetes_asyncio API turns every response into model objects; at thousands of
objects that costs more than the request itself, so requests go out through aiohttp with
orjson, with the server, TLS and credentials from ``access`` (kubeconfig or in-cluster).
A request that hits a dead pooled connection (the apiserver restarted) or a 429/5xx is retried
with a short backoff; everything else is mapped to ``aioreconcile.engine.errors``.

``impersonating`` gives a view of the same connection pool whose every request carries
``Impersonate-User``/``Impersonate-Group`` (client-go ``rest.ImpersonationConfig``): the API
server authorises it as that user, so a sync with a service account can do only what that
account may. The controller's own credentials still authenticate the connection, and the
controller needs the ``impersonate`` verb on those users and groups.

Every connection has TCP keepalive on (probes after 30 s idle, every 10 s, dead after 3 misses),
as client-go's dialer has (``KeepAlive: 30 * time.Second``): a peer that vanished without a FIN
(a node gone, a NAT entry dropped) then breaks the socket within about a minute instead of the
kernel's two hours. Keepalive cannot see a middlebox that still answers probes but forwards
nothing; a watch bounds that with its read timeout (``stream(read_timeout_s=...)``), and so does
every other request when the transport is given one (``read_timeout_s``): a request waiting
longer than that for a byte gives up, drops the idle pool (``drop_idle_connections``) and is
retried on a new connection. Without it, a request handed a pooled connection gone silent
(before any watch noticed) waited its whole time limit (60 s) while the sync queued behind it
(found by the soak, ``bench/soak.py``). client-go bounds the same with HTTP/2 health pings
(``ReadIdleTimeout``, kubernetes/kubernetes#87615).
"""

import copy
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
import anyio
import orjson

from aioreconcile.adapters.kube.access import ClusterAccess, cluster_access
from aioreconcile.engine.errors import ApiError, ConflictError, NotFoundError, TransientError
from aioreconcile.engine.model import JsonObject

JSON: Final = "application/json"
APPLY_PATCH: Final = "application/apply-patch+yaml"
MERGE_PATCH: Final = "application/merge-patch+json"
_RETRY_DELAYS: Final = (0.05, 0.2, 0.5, 1.0, 2.0)
KEEPALIVE_IDLE_S: Final = 30
KEEPALIVE_INTERVAL_S: Final = 10
KEEPALIVE_PROBES: Final = 3


class ReadTimedOut(TransientError):
    """Nothing arrived on an open stream for longer than its read timeout: the connection is
    presumed half-open (the peer or a middlebox went silent). Retrying on a new one is right."""


def keepalive_socket(
    addr_info: tuple[int, int, int, str, tuple[object, ...]],
) -> socket.socket:
    """A TCP socket with keepalive probing (aiohttp's ``socket_factory``)."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=kind, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        if hasattr(socket, option):  # Linux; macOS names the idle time TCP_KEEPALIVE
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    return sock


@dataclass(frozen=True)
class Response:
    status: int
    body: JsonObject


def _api_error(status: int, raw: bytes) -> ApiError:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    reason = str(payload.get("reason") or "")
    message = str(payload.get("message") or raw[:500].decode(errors="replace"))
    details = payload.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    fields = tuple(
        (str(cause.get("field") or ""), str(cause.get("message") or ""))
        for cause in causes or ()
        if isinstance(cause, dict)
    )
    kind = {404: NotFoundError, 409: ConflictError}.get(status, ApiError)
    return kind(status=status, reason=reason, message=message, causes=fields)


class KubeTransport:
    """One connection pool to one API server; safe to share across tasks."""

    def __init__(
        self,
        access: ClusterAccess,
        *,
        max_connections: int = 64,
        read_timeout_s: float | None = None,
    ) -> None:
        self._access = access
        self._read_timeout_s = read_timeout_s  # per wait for bytes; None: the time limit only
        self.host: str = access.host
        self._owner = True
        self._impersonation: tuple[tuple[str, str], ...] = ()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=max_connections, ssl=access.ssl_context(), socket_factory=keepalive_socket
            ),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )

    @classmethod
    async def connect(
        cls,
        kubeconfig: Path | None = None,
        *,
        context: str | None = None,
        max_connections: int = 64,
        read_timeout_s: float | None = None,
    ) -> "KubeTransport":
        return cls(
            await cluster_access(kubeconfig, context=context),
            max_connections=max_connections,
            read_timeout_s=read_timeout_s,
        )

    def impersonating(self, user: str, groups: Sequence[str]) -> "KubeTransport":
        """The same connection pool and credentials, every request made as ``user`` in
        ``groups``. Closing the view closes nothing: the pool belongs to this transport."""
        view = copy.copy(self)
        view._owner = False
        view._impersonation = (
            ("Impersonate-User", user),
            *(("Impersonate-Group", group) for group in groups),
        )
        return view

    def drop_idle_connections(self) -> int:
        """Abort every idle connection of the pool (shared with impersonating views); the next
        requests open new ones. How many were dropped.

        Called when a watch went silent: whatever silenced it (a blackhole, a NAT entry or a
        conntrack entry dropped) silenced the idle connections to the same server alike, and
        aiohttp hands a pooled connection out for 15 s after its last use without knowing it
        is dead. A request on one waits its whole time limit (a restarted watch: a second read
        timeout; a heal: 60 s). kubelet does the same for the same reason: a failed heartbeat
        closes all its connections (``closeAllConns``, client-go ``util/connrotation``).
        A watch that was merely quiet drops them too; that costs the next requests a new
        connection each, once per read timeout at most. aiohttp has no public call for it,
        hence its pool (``BaseConnector._conns``) here.
        """
        connector = self._session.connector
        if connector is None:
            return 0
        dropped = 0
        for connections in connector._conns.values():
            while connections:
                protocol, _ = connections.popleft()
                if protocol.transport is not None:
                    protocol.transport.abort()  # no TLS close_notify: nobody would answer it
                protocol.close()
                dropped += 1
        connector._conns.clear()
        return dropped

    async def close(self) -> None:
        if not self._owner:
            return
        await self._session.close()
        await self._access.close()

    async def __aenter__(self) -> "KubeTransport":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _headers(self, content_type: str | None, accept: str) -> list[tuple[str, str]]:
        headers = [("Accept", accept)]
        if content_type:
            headers.append(("Content-Type", content_type))
        # Bearer tokens from files and exec plugins are refreshed before they expire.
        headers += (await self._access.authorization()).items()
        # One Impersonate-Group header per group, as client-go sends them (pairs, not a dict).
        headers += self._impersonation
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str = JSON,
        accept: str = JSON,
        time_limit: float = 60.0,
    ) -> Response:
        """Send one request; return status and decoded JSON, or raise our error."""
        data = None if body is None else (body if isinstance(body, bytes) else orjson.dumps(body))
        url = self.host + path
        for attempt, delay in enumerate((*_RETRY_DELAYS, None)):
            headers = await self._headers(content_type if data is not None else None, accept)
            try:
                async with self._session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=time_limit, sock_read=self._read_timeout_s),
                ) as response:
                    raw = await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
                if isinstance(e, aiohttp.SocketTimeoutError):
                    # Silent past the read timeout: the path is dead for the pool's idle
                    # connections too; the retry takes a new one (as a silent watch does).
                    self.drop_idle_connections()
                if delay is None:
                    raise TransientError(f"{method} {path}: {type(e).__name__}: {e}") from e
                await anyio.sleep(delay)
                continue
            if status < 400:
                decoded = orjson.loads(raw) if raw else {}
                return Response(status, decoded if isinstance(decoded, dict) else {})
            error = _api_error(status, raw)
            if error.transient and delay is not None:
                await anyio.sleep(delay * (attempt + 1))
                continue
            raise error
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def stream(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        read_timeout_s: float | None = None,
    ) -> AsyncIterator[aiohttp.StreamReader]:
        """An open GET stream (watches): the caller reads newline-delimited JSON events.

        ``read_timeout_s`` bounds each wait for bytes, the response headers included; past it
        the stream ends with ``ReadTimedOut``. None waits as long as the connection lives.
        """
        headers = await self._headers(None, JSON)
        try:
            async with self._session.get(
                self.host + path,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=10, sock_read=read_timeout_s
                ),
            ) as response:
                if response.status >= 400:
                    raise _api_error(response.status, await response.read())
                yield response.content
        except aiohttp.SocketTimeoutError as e:
            raise ReadTimedOut(f"watch {path}: nothing received for {read_timeout_s:g} s") from e
        except (TimeoutError, aiohttp.ClientConnectionError) as e:
            raise TransientError(f"watch {path}: {type(e).__name__}: {e}") from e
