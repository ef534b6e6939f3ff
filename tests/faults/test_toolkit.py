"""The fault toolkit itself, on loopback sockets: each fault looks to a client as the real
thing does (a reset is ECONNRESET, a cut is an end of stream, a hang answers nothing, latency
delays), and etcd compaction really makes an old resourceVersion 410 Gone."""

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import pytest
from kubernetes_asyncio import client

from aioreconcile.testing.faults import FaultProxy, compact_etcd, start_proxy
from aioreconcile.testing.pytest_plugin import Kube

pytestmark = pytest.mark.faults


async def _echo(stream: anyio.abc.SocketStream) -> None:
    async with stream:
        try:
            while True:
                await stream.send(await stream.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, _echo)
        async with start_proxy("127.0.0.1", port) as running:
            yield running
        tasks.cancel_scope.cancel()


async def test_forwards_then_adds_latency(proxy: FaultProxy) -> None:
    async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
        await stream.send(b"ping")
        assert await stream.receive() == b"ping"
        proxy.latency_s = 0.2
        began = time.monotonic()
        await stream.send(b"slow")
        assert await stream.receive() == b"slow"
        assert time.monotonic() - began >= 0.4  # both directions


async def test_reset_is_seen_as_a_connection_reset(proxy: FaultProxy) -> None:
    async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
        await stream.send(b"ping")
        await stream.receive()
        assert proxy.reset() == 1
        with pytest.raises((anyio.BrokenResourceError, ConnectionResetError)):
            with anyio.fail_after(5):
                await stream.receive()


async def test_cut_is_seen_as_an_end_of_stream(proxy: FaultProxy) -> None:
    async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
        await stream.send(b"ping")
        await stream.receive()
        assert proxy.cut() == 1
        with pytest.raises(anyio.EndOfStream), anyio.fail_after(5):
            await stream.receive()


async def test_blackhole_and_hang_answer_nothing_and_close_nothing(proxy: FaultProxy) -> None:
    async with await anyio.connect_tcp("127.0.0.1", proxy.port) as open_before:
        await open_before.send(b"ping")
        await open_before.receive()
        proxy.blackhole()
        proxy.mode = "hang"
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as opened_after:
            for stream in (open_before, opened_after):
                await stream.send(b"anyone?")
                with anyio.move_on_after(0.5) as waited:
                    await stream.receive()
                assert waited.cancelled_caught
        assert proxy.hung == 1


async def test_reset_mode_refuses_new_connections(proxy: FaultProxy) -> None:
    proxy.mode = "reset"
    async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
        with anyio.fail_after(5):
            await anyio.sleep(0.1)  # the RST arrives
            with pytest.raises(
                (anyio.BrokenResourceError, ConnectionResetError, anyio.EndOfStream)
            ):
                await stream.receive()
    assert proxy.refused == 1


def _range_at(etcd_url: str, revision: int) -> tuple[int, str]:
    request = urllib.request.Request(
        f"{etcd_url}/v3/kv/range",
        data=json.dumps({"key": base64.b64encode(b"/").decode(), "revision": revision}).encode(),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.integration
async def test_compaction_makes_etcd_forget_every_older_revision(
    kube: Kube, namespace: str
) -> None:
    core = client.CoreV1Api(kube.api)
    old = int((await core.list_namespaced_config_map(namespace)).metadata.resource_version)
    await core.create_namespaced_config_map(namespace, {"metadata": {"name": "moves"}})
    etcd_url = kube.control_plane.etcd_url
    assert (await anyio.to_thread.run_sync(_range_at, etcd_url, old))[0] == 200

    revision = await compact_etcd(etcd_url)

    assert revision > old
    code, answer = await anyio.to_thread.run_sync(_range_at, etcd_url, old)
    assert code != 200
    assert "compacted" in answer
