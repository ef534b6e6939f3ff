"""A smart-HTTP Git server for the benchmarks: ``git http-backend`` as CGI, one process per
request, behind Python's threaded HTTP server (what tests/git/conftest.py's ``git_http``
fixture does in-process, here as a child so it never shares the benchmark's interpreter).

    python -m bench.githttp --root SERVED --port PORT

No authentication: a benchmark measures the transport, not a 401 round trip. Loopback only.
"""

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aioreconcile.testing.githttp import answer_with_http_backend, read_body


def serve(root: Path, port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real front end does

        def do_GET(self) -> None:
            self.serve()

        def do_POST(self) -> None:
            self.serve()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def serve(self) -> None:
            body = read_body(self)
            answer_with_http_backend(self, root, body)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    serve(arguments.root, arguments.port)
