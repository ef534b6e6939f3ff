"""``git http-backend`` as CGI behind a stdlib ``BaseHTTPRequestHandler``: the one smart-HTTP
Git responder shared by tests/git/conftest.py's ``git_http`` fixture and bench/githttp.py, so
a test and a benchmark speak to the same server (Git's own t/lib-httpd does the same with
Apache: http-backend is the reference smart-HTTP implementation). Loopback only.
"""

from __future__ import annotations

import os
import socket
import subprocess
from http.server import BaseHTTPRequestHandler
from pathlib import Path


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, chunked (git sends large pushes chunked) or by Content-Length."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().strip().split(b";")[0], 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def answer_with_http_backend(
    handler: BaseHTTPRequestHandler, root: Path, body: bytes, *, remote_user: str | None = None
) -> None:
    """Run ``git http-backend`` for this request over ``root`` and write its CGI answer back.

    ``remote_user`` is set once the caller has authenticated the request (http-backend
    refuses receive-pack without REMOTE_USER)."""
    path, _, query = handler.path.partition("?")
    env = {
        "PATH": os.environ["PATH"],
        "GIT_PROJECT_ROOT": str(root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "REQUEST_METHOD": handler.command,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "CONTENT_TYPE": handler.headers.get("Content-Type", ""),
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_ADDR": "127.0.0.1",
        "GIT_PROTOCOL": handler.headers.get("Git-Protocol", ""),
        "HTTP_CONTENT_ENCODING": handler.headers.get("Content-Encoding", ""),
    }
    if remote_user is not None:
        env["REMOTE_USER"] = remote_user
    result = subprocess.run(
        ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
    )
    head, _, payload = result.stdout.partition(b"\r\n\r\n")
    if not payload and b"\n\n" in head:
        head, _, payload = result.stdout.partition(b"\n\n")
    status, headers = 200, []
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.split()[0])
        elif name:
            headers.append((name, value.strip()))
    # TCP_NODELAY, as Apache and nginx set it: the headers and the body leave in two writes,
    # and with Nagle's algorithm the body waited for the client's delayed ACK of the headers,
    # ~40 ms per POST (85 of a 145 ms fetch on loopback): an artefact of this responder, not of
    # smart HTTP.
    handler.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    handler.send_response(status)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)
