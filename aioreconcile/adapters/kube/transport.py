"""Raw JSON requests to the API server over one aiohttp session.

The generated kubernetes_asyncio API turns every response into model objects; at thousands of
objects that costs more than the request itself, so we keep its configuration and credentials
(kubeconfig parsing, exec plugins, token refresh) and send the requests ourselves with orjson.
A request that hits a dead pooled connection (the apiserver restarted) or a 429/5xx is retried
with a short backoff; everything else is mapped to ``aioreconcile.engine.errors``.
"""

import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import anyio
import orjson

from aioreconcile.adapters.kube.connecting import connect
from aioreconcile.engine.errors import ApiError, ConflictError, NotFoundError, TransientError
from aioreconcile.engine.model import JsonObject

JSON: Final = "application/json"
APPLY_PATCH: Final = "application/apply-patch+yaml"
MERGE_PATCH: Final = "application/merge-patch+json"
_RETRY_DELAYS: Final = (0.05, 0.2, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Response:
    status: int
    body: JsonObject


def _ssl_context(configuration: Any) -> ssl.SSLContext | bool:
    if not configuration.host.startswith("https"):
        return False
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, keyfile=configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _api_error(status: int, raw: bytes) -> ApiError:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    reason = str(payload.get("reason") or "")
    message = str(payload.get("message") or raw[:500].decode(errors="replace"))
    kind = {404: NotFoundError, 409: ConflictError}.get(status, ApiError)
    return kind(status=status, reason=reason, message=message)


class KubeTransport:
    """One connection pool to one API server; safe to share across tasks."""

    def __init__(self, api_client: Any, *, max_connections: int = 64) -> None:
        self._api_client = api_client
        self.host: str = api_client.configuration.host.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=max_connections, ssl=_ssl_context(api_client.configuration)
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
    ) -> "KubeTransport":
        return cls(await connect(kubeconfig, context=context), max_connections=max_connections)

    async def close(self) -> None:
        await self._session.close()
        await self._api_client.close()

    async def __aenter__(self) -> "KubeTransport":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _headers(self, content_type: str | None, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        # Fills Authorization from the kubeconfig, refreshing exec/OIDC tokens when they expire.
        await self._api_client.update_params_for_auth(headers, [], ["BearerToken"])
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
                    timeout=aiohttp.ClientTimeout(total=time_limit),
                ) as response:
                    raw = await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
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
        self, path: str, *, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[aiohttp.StreamReader]:
        """An open GET stream (watches): the caller reads newline-delimited JSON events."""
        headers = await self._headers(None, JSON)
        try:
            async with self._session.get(
                self.host + path,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None),
            ) as response:
                if response.status >= 400:
                    raise _api_error(response.status, await response.read())
                yield response.content
        except (TimeoutError, aiohttp.ClientConnectionError) as e:
            raise TransientError(f"watch {path}: {type(e).__name__}: {e}") from e
