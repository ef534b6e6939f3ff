"""Faults for tests, made with real sockets and real processes, never mocks.

``FaultProxy`` is a loopback TCP proxy put between a client (the controller) and a real server
(kube-apiserver, git daemon). It forwards bytes both ways and, on demand:

- ``blackhole()``: the connections open now go half-open: both ends stay connected, every byte
  (and every close) is dropped. A NAT or a load balancer that forgot the flow, a node gone
  without a FIN: the client's socket waits for bytes that never come. Connections opened later
  are forwarded normally, as a fresh connection through a real network would be.
- ``latency_s``: every chunk waits that long before it is forwarded (each direction).
- ``cut()``: the open connections are closed (a FIN to both ends), as a server or a proxy that
  restarts cleanly.
- ``reset()``: the open connections are reset (an RST to both ends: ``SO_LINGER`` 0, then
  close), as a middlebox that drops the flow and says so.
- ``mode`` for new connections: ``"forward"``; ``"hang"`` (accepted, never answered: the
  server's kernel completes the handshake and nobody reads, a hung server); ``"reset"``
  (accepted and reset at once, a server that is down behind a load balancer).

Toxiproxy (Shopify) offers the same toxics from a Go binary; this one is a hundred lines of
anyio, runs in the test's event loop (no process or port to manage, no build), and its
``blackhole`` keeps both ends open, which Toxiproxy's ``timeout`` toxic (it closes the
connection after the timeout, or never with 0, but its upstream side keeps reading) does not
model exactly.

Process faults are ``ManagedProcess.kill9``/``pause``/``resume`` (``processes.py``);
``compact_etcd`` compacts etcd's history through its v3 JSON gateway, so that a watch that
resumes from before it gets 410 Gone.
"""

import base64
import contextlib
import json
import socket
import struct
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import anyio
import anyio.abc
import yaml
from anyio.abc import SocketStream

_CHUNK = 65536

Mode = Literal["forward", "hang", "reset"]


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream twin."""

    client: SocketStream
    upstream: SocketStream
    silent: bool = False
    reset: bool = False  # close with an RST instead of a FIN
    done: anyio.Event = field(default_factory=anyio.Event)


def _abort(stream: SocketStream) -> None:
    """Make the next close send an RST (``SO_LINGER`` on, 0 s) instead of a FIN."""
    raw: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    with contextlib.suppress(OSError):  # already closed
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class FaultProxy:
    """A loopback TCP proxy to ``target``; see the module docstring. Use ``start_proxy``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.mode: Mode = "forward"
        self.latency_s = 0.0
        self.connections = 0  # accepted so far
        self.opened_at: list[float] = []  # time.monotonic() of each accepted connection
        self.blackholed = 0  # connections silenced so far
        self.hung = 0  # connections accepted and never answered (mode "hang")
        self.refused = 0  # connections reset on arrival (mode "reset")
        self._links: set[_Link] = set()

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def blackhole(self) -> int:
        """Silence every connection open now (not later ones); return how many."""
        silenced = 0
        for link in self._links:
            if not link.silent:
                link.silent = True
                silenced += 1
        self.blackholed += silenced
        return silenced

    def cut(self) -> int:
        """Close every connection open now (a FIN to both ends); return how many."""
        return self._end(reset=False)

    def reset(self) -> int:
        """Reset every connection open now (an RST to both ends); return how many."""
        return self._end(reset=True)

    def _end(self, *, reset: bool) -> int:
        ended = 0
        for link in list(self._links):
            if not link.done.is_set():
                link.reset = reset
                link.done.set()
                ended += 1
        return ended

    async def _serve(self, client: SocketStream) -> None:
        self.connections += 1
        self.opened_at.append(time.monotonic())
        if self.mode == "reset":
            self.refused += 1
            _abort(client)
            await client.aclose()
            return
        if self.mode == "hang":
            self.hung += 1
            await self._swallow(client)
            return
        try:
            upstream = await anyio.connect_tcp(self.target_host, self.target_port)
        except OSError:
            _abort(client)  # as the real server's refusal would look through a proxy
            await client.aclose()
            return
        link = _Link(client, upstream)
        self._links.add(link)
        try:
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(self._pump, link, client, upstream)
                pumps.start_soon(self._pump, link, upstream, client)
                await link.done.wait()
                pumps.cancel_scope.cancel()
        finally:
            self._links.discard(link)
            with anyio.CancelScope(shield=True):
                if link.reset:
                    _abort(client)
                    _abort(upstream)
                await client.aclose()
                await upstream.aclose()

    @staticmethod
    async def _swallow(client: SocketStream) -> None:
        """Read and drop until the client gives up; never answer, never close first."""
        try:
            while True:
                await client.receive(_CHUNK)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    async def _pump(self, link: _Link, source: SocketStream, sink: SocketStream) -> None:
        """Copy ``source`` to ``sink`` until either end closes; once silent, read and drop,
        and keep both sockets open even when an end closes (its FIN is dropped too)."""
        try:
            while True:
                chunk = await source.receive(_CHUNK)
                if self.latency_s > 0:
                    await anyio.sleep(self.latency_s)
                if not link.silent:
                    await sink.send(chunk)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        if link.silent:
            await anyio.sleep_forever()  # half-open: nobody is told
        link.done.set()


def kubeconfig_via(kubeconfig: Path, port: int, directory: Path) -> Path:
    """A copy of ``kubeconfig`` whose server is ``127.0.0.1:port`` (a ``FaultProxy``'s): TLS
    still verifies, as the apiserver's certificate names 127.0.0.1 whatever the port."""
    document = yaml.safe_load(kubeconfig.read_text())
    for cluster in document["clusters"]:
        server = urlsplit(cluster["cluster"]["server"])
        cluster["cluster"]["server"] = f"{server.scheme}://127.0.0.1:{port}"
    path = directory / f"kubeconfig-via-{port}"
    path.write_text(yaml.safe_dump(document))
    return path


@asynccontextmanager
async def start_proxy(target_host: str, target_port: int) -> AsyncIterator[FaultProxy]:
    """A running ``FaultProxy`` on 127.0.0.1 (``.port``); closes every connection on exit."""
    proxy = FaultProxy(target_host, target_port)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, proxy._serve)
        try:
            yield proxy
        finally:
            tasks.cancel_scope.cancel()


def _etcd_call(etcd_url: str, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        f"{etcd_url}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


def _compact(etcd_url: str) -> int:
    # Any key will do: every answer carries the store's current revision in its header.
    answer = _etcd_call(
        etcd_url, "/v3/kv/range", {"key": base64.b64encode(b"/").decode(), "limit": 1}
    )
    header = answer["header"]
    assert isinstance(header, dict)
    revision = int(header["revision"])
    _etcd_call(etcd_url, "/v3/kv/compaction", {"revision": revision, "physical": True})
    return revision


async def compact_etcd(etcd_url: str) -> int:
    """Compact etcd's history up to its current revision (what ``etcdctl compact`` does, through
    the v3 JSON gateway on the client URL); return that revision. A watch that resumes from an
    older resourceVersion, when served by etcd, is then answered 410 Gone."""
    return await anyio.to_thread.run_sync(_compact, etcd_url)
