"""The webhook listener against hostile and broken clients: raw sockets on loopback against the
real aiohttp server as ``serve`` runs it (slow heads and bodies, malformed requests, clients
that vanish, control characters in refs, more connections than allowed)."""

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from aioreconcile.adapters.serving.endpoints import build_ops_app
from aioreconcile.adapters.serving.listening import ListenerLimits, serve
from aioreconcile.adapters.webhook.receiving import build_app
from aioreconcile.engine.config import GitSourceSpec, Provider, ReceiverSpec, SyncSpec
from aioreconcile.engine.triggers import Push
from aioreconcile.engine.webhooks import sign

SECRET = b"listener-test-secret"
MARKER = "M4RK3R-of-the-request-bytes"
LIMITS = ListenerLimits(header_timeout_s=0.5, body_timeout_s=0.5, max_connections=20)
APP = SyncSpec("app", GitSourceSpec(url="https://github.com/acme/app.git", ref="main"))


@dataclass
class Listener:
    port: int
    enqueued: list[Push] = field(default_factory=list)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def exchange(self, raw: bytes, *, seconds: float = 5) -> bytes:
        """Send ``raw``, read until the server closes (or ``seconds``)."""
        reader, writer = await self.connect()
        writer.write(raw)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), seconds)
        finally:
            writer.close()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    receivers = [ReceiverSpec("github", Provider.GITHUB, secret_env="UNUSED", syncs=("app",))]
    state = Listener(port=0)
    app = build_app(
        receivers,
        secrets={"github": SECRET},
        syncs=lambda: [APP],
        enqueue=state.enqueued.append,
        body_timeout_s=LIMITS.body_timeout_s,
    )
    async with serve(app, host="127.0.0.1", port=0, limits=LIMITS) as port:
        state.port = port
        yield state


def split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def push_request(ref: str = "refs/heads/main", *, delivery: str = "d-1") -> bytes:
    body = json.dumps(
        {
            "ref": ref,
            "before": "0" * 40,
            "after": "59b20b8d5c6ff8d09518454d4dd8b7a30f095ab5",
            "repository": {"clone_url": "https://github.com/acme/app.git"},
        }
    ).encode()
    head = (
        "POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-GitHub-Event: push\r\nX-GitHub-Delivery: {delivery}\r\n"
        f"X-Hub-Signature-256: sha256={sign(SECRET, body)}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''} "
        f"{json.dumps(vars(r), default=str)}"
        for r in caplog.records
    )


# --- slow clients -------------------------------------------------------------------------------


async def test_a_head_that_does_not_arrive_in_time_is_answered_408_and_closed(
    listener: Listener,
) -> None:
    reader, writer = await listener.connect()
    writer.write(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    await writer.drain()

    response = await asyncio.wait_for(reader.read(), 5)  # EOF: the server closed
    writer.close()

    status, headers, body = split(response)
    assert status == 408
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "status": "request-timeout",
        "reason": "request timeout",
        "triggered": [],
    }


async def test_a_head_trickled_byte_by_byte_is_cut_at_the_deadline(listener: Listener) -> None:
    reader, writer = await listener.connect()
    started = asyncio.get_running_loop().time()
    request = b"POST /hooks/github HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: a\r\n" * 100
    closed_after = None
    for byte in request:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.sleep(0.01)
        if reader.at_eof() or (closed_after is None and reader._buffer):  # type: ignore[attr-defined]
            closed_after = asyncio.get_running_loop().time() - started
            break
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()

    assert split(response)[0] == 408
    assert closed_after is not None
    assert closed_after < LIMITS.header_timeout_s + 0.5


async def test_a_body_that_does_not_arrive_in_time_is_answered_408_and_closed(
    listener: Listener,
) -> None:
    full = push_request()
    reader, writer = await listener.connect()
    writer.write(full[: len(full) - 10])  # head complete, the body ten bytes short
    await writer.drain()

    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()

    status, _, body = split(response)
    assert status == 408
    assert json.loads(body)["status"] == "request-timeout"
    assert listener.enqueued == []


async def test_a_slow_second_head_on_a_kept_alive_connection_gets_408(listener: Listener) -> None:
    first = push_request(delivery="keep-1").replace(b"Connection: close\r\n", b"")
    reader, writer = await listener.connect()
    writer.write(first)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(split(head)[1]["content-length"])
    await asyncio.wait_for(reader.readexactly(length), 5)
    assert split(head)[0] == 202

    writer.write(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\n")  # ...and nothing more
    await writer.drain()
    second = await asyncio.wait_for(reader.read(), 5)
    writer.close()

    assert split(second)[0] == 408


async def test_a_silent_connection_is_closed_without_an_answer(listener: Listener) -> None:
    reader, writer = await listener.connect()

    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()

    assert response == b""


async def test_a_prompt_request_is_served_as_before(listener: Listener) -> None:
    status, _, body = split(await listener.exchange(push_request()))

    assert status == 202
    assert json.loads(body)["triggered"] == ["app"]


# --- malformed requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(f"GET /{MARKER} HTTP/1.1 extra\r\n\r\n".encode(), id="bad-request-line"),
        pytest.param(f"{MARKER}\r\n\r\n".encode(), id="not-http"),
        pytest.param(f"G\x00T /{MARKER} HTTP/1.1\r\n\r\n".encode(), id="bad-method"),
        pytest.param(
            f"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-{MARKER}\r\n\r\n".encode(),
            id="header-without-colon",
        ),
        pytest.param(
            f"POST /hooks/github HTTP/1.1\r\nX-Big: {MARKER}{'a' * 9000}\r\n\r\n".encode(),
            id="header-too-large",
        ),
        pytest.param(
            f"POST /hooks/github HTTP/1.1\r\nContent-Length: {MARKER}\r\n\r\n".encode(),
            id="bad-content-length",
        ),
        pytest.param(
            b"POST /hooks/github HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"zz{MARKER}\r\n".encode(),
            id="bad-chunk",
        ),
    ],
)
async def test_a_malformed_request_is_answered_in_json_and_never_logged(
    listener: Listener, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    caplog.set_level(logging.DEBUG)

    status, headers, body = split(await listener.exchange(raw))

    assert 400 <= status < 500
    assert headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert set(answer) == {"status", "reason", "triggered"}
    assert MARKER not in body.decode()
    assert MARKER not in logged(caplog)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_broken_chunk_after_the_head_is_a_json_400_and_never_logged(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reader, writer = await listener.connect()
    writer.write(
        b'POST /hooks/github HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a\r\n'
    )
    await writer.drain()
    await asyncio.sleep(0.1)  # the handler is reading the body by now
    writer.write(f"zz{MARKER}\r\n".encode())
    await writer.drain()

    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()

    status, headers, body = split(response)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["status"] == "bad-request"
    assert MARKER not in logged(caplog)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_an_unknown_path_is_a_json_404(listener: Listener) -> None:
    raw = b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    status, headers, body = split(await listener.exchange(raw))

    assert status == 404
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["status"] == "not-found"


async def test_a_client_gone_mid_body_is_one_debug_line(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    full = push_request()
    _, writer = await listener.connect()
    writer.write(full[: len(full) - 10])
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.transport.abort()  # RST: gone for good
    await asyncio.sleep(0.3)

    problems = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert problems == []
    gone = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(gone) == 1
    assert gone[0].levelno == logging.DEBUG
    assert listener.enqueued == []


# --- control characters in refs -----------------------------------------------------------------


async def test_control_characters_in_a_ref_are_escaped_in_the_answer_and_the_log(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ref = "refs/heads/x\u2028fake\u202eline\u0085y\x9bz"

    status, _, body = split(await listener.exchange(push_request(ref)))

    assert status == 202
    reason = json.loads(body)["reason"]
    assert "refs/heads/x\\u2028fake\\u202eline\\x85y\\x9bz" in reason
    assert reason.isprintable()
    assert any("refs/heads/x\\u2028" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        assert record.getMessage().isprintable(), record.getMessage()
        for value in vars(record).values():
            if isinstance(value, str):
                assert value.isprintable(), (record.getMessage(), value)


async def test_control_characters_in_an_event_header_are_escaped_in_the_answer(
    listener: Listener,
) -> None:
    body = b"{}"
    raw = (
        b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: is\xe2\x80\xaesues\r\n"
        b"X-GitHub-Delivery: d-9\r\nX-Hub-Signature-256: sha256="
        + sign(SECRET, body).encode()
        + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        + body
    )

    status, _, answer = split(await listener.exchange(raw))

    assert status == 202
    reason = json.loads(answer)["reason"]
    assert reason.isprintable()
    assert "\\u202e" in reason


# --- bounded connections ------------------------------------------------------------------------


async def test_connections_over_the_cap_are_closed_as_they_open(listener: Listener) -> None:
    held = [await listener.connect() for _ in range(LIMITS.max_connections)]
    await asyncio.sleep(0.05)
    reader, writer = await listener.connect()

    extra = await asyncio.wait_for(reader.read(), 1)  # closed at once, long before the timeout
    writer.close()
    for _, w in held:
        w.close()

    assert extra == b""


async def test_the_ops_listener_answers_its_endpoints_and_json_404s() -> None:
    app = build_ops_app(status=lambda: {"syncs": []}, metrics=lambda: "m 1\n", ready=lambda: True)
    async with serve(app, host="127.0.0.1", port=0, limits=LIMITS) as port:
        ops = Listener(port)
        status_code, _, body = split(
            await ops.exchange(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        )
        hook_code, _, hook = split(
            await ops.exchange(
                b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n"
            )
        )

    assert (status_code, json.loads(body)) == (200, {"syncs": []})
    assert (hook_code, json.loads(hook)["status"]) == (404, "not-found")
