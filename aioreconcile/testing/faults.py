"""Network faults for tests, made with real sockets: a TCP proxy that can go silent.

A half-open connection is the failure a watch cannot see by itself: a NAT or a load balancer
forgets the flow, a node vanishes without a FIN, and the client's socket stays open, waiting
for bytes that never come. ``BlackholeProxy`` reproduces it on loopback: it forwards bytes
both ways between a client and ``target`` until ``blackhole()``; from then on the connections
open at that moment stay open at both ends and every byte (and every close) is dropped.
Connections opened later are forwarded normally, as a fresh connection through a real network
would be, so a client that notices the silence and reconnects gets through.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc
from anyio.abc import SocketStream

_CHUNK = 65536


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream twin."""

    client: SocketStream
    upstream: SocketStream
    silent: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)


class BlackholeProxy:
    """A loopback TCP proxy to ``target``; see the module docstring. Use ``start_proxy``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.connections = 0  # accepted so far
        self.blackholed = 0  # connections silenced so far
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

    async def _serve(self, client: SocketStream) -> None:
        self.connections += 1
        try:
            upstream = await anyio.connect_tcp(self.target_host, self.target_port)
        except OSError:
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
                await client.aclose()
                await upstream.aclose()

    async def _pump(self, link: _Link, source: SocketStream, sink: SocketStream) -> None:
        """Copy ``source`` to ``sink`` until either end closes; once silent, read and drop,
        and keep both sockets open even when an end closes (its FIN is dropped too)."""
        try:
            while True:
                chunk = await source.receive(_CHUNK)
                if not link.silent:
                    await sink.send(chunk)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        if link.silent:
            await anyio.sleep_forever()  # half-open: nobody is told
        link.done.set()


@asynccontextmanager
async def start_proxy(target_host: str, target_port: int) -> AsyncIterator[BlackholeProxy]:
    """A running ``BlackholeProxy`` on 127.0.0.1 (``.port``); closes every connection on exit."""
    proxy = BlackholeProxy(target_host, target_port)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, proxy._serve)
        try:
            yield proxy
        finally:
            tasks.cancel_scope.cancel()
