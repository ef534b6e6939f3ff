"""Real Git servers on loopback for the Git adapter's tests.

``upstream`` makes bare repositories (with a working clone to commit and push from) under one
directory that ``git_daemon`` serves over ``git://`` and ``git_http`` serves over smart HTTP
(``git http-backend`` behind a small threaded server requiring basic auth). ``hung_server``
accepts TCP connections and never answers.
"""

import base64
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aioreconcile.adapters.git import GitCache, running
from aioreconcile.testing.githttp import answer_with_http_backend, read_body

HTTP_USER = "deployer"
HTTP_PASSWORD = "s3cr3t-t0ken-do-not-print"


def git_env(home: Path) -> dict[str, str]:
    """A deterministic environment for the tests' own git commands."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Ada Author",
        "GIT_AUTHOR_EMAIL": "ada@example.com",
        "GIT_COMMITTER_NAME": "Ada Author",
        "GIT_COMMITTER_EMAIL": "ada@example.com",
        "LC_ALL": "C",
    }


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, home: Path) -> str:
    result = subprocess.run(
        ["git", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        env={**git_env(home), **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


@dataclass
class Upstream:
    """A bare repository under the served root and a working clone that pushes to it."""

    name: str
    bare: Path
    work: Path
    home: Path

    def git(self, *args: str, env: dict[str, str] | None = None) -> str:
        return git(*args, cwd=self.work, env=env, home=self.home)

    def commit(
        self,
        files: dict[str, str],
        message: str = "change",
        *,
        sign: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> str:
        """Write ``files``, commit them (``sign``: extra args, e.g. ``-c gpg.format=ssh``) and
        push to the bare repository; returns the new SHA."""
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.git("add", "--all")
        signing = ["-S"] if sign else []
        self.git(*sign, "commit", "--quiet", *signing, "-m", message, env=env)
        self.git("push", "--quiet", "origin", "HEAD:main")
        return self.git("rev-parse", "HEAD")

    def tag(self, name: str, *, annotated: bool) -> str:
        """Tag HEAD and push the tag; returns the tag object's SHA (the commit's if light)."""
        if annotated:
            self.git("tag", "-a", name, "-m", f"release {name}")
        else:
            self.git("tag", name)
        self.git("push", "--quiet", "origin", f"refs/tags/{name}")
        return self.git("rev-parse", f"refs/tags/{name}")


@pytest.fixture
def served_root(tmp_path: Path) -> Path:
    root = tmp_path / "served"
    root.mkdir()
    return root


@pytest.fixture
def upstream(served_root: Path, tmp_path: Path) -> Callable[[str], Upstream]:
    """Make ``<served>/<name>.git`` and a clone of it to commit from."""
    home = tmp_path / "test-home"
    home.mkdir(exist_ok=True)

    def make(name: str) -> Upstream:
        bare = served_root / f"{name}.git"
        git("init", "--quiet", "--bare", str(bare), home=home)
        work = tmp_path / "work" / name
        git("clone", "--quiet", str(bare), str(work), home=home)
        return Upstream(name, bare, work, home)

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, *, process: subprocess.Popen[bytes], deadline_s: float = 10) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {deadline_s} s")


@pytest.fixture
def git_daemon(served_root: Path) -> Iterator[str]:
    """``git://127.0.0.1:<port>/``, serving every repository under ``served_root``."""
    port = free_port()
    process = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            f"--base-path={served_root}",
            "--export-all",
            "--enable=receive-pack",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(served_root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, process=process)
        yield f"git://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class HttpGit:
    """Smart HTTP in front of ``served_root``: ``base`` ends with a slash."""

    base: str
    username: str
    password: str
    unauthorized: int = 0
    requests: int = 0
    # Command lines of all processes on the machine that held the password while a request
    # was being served (the client's git and its remote helper were running then).
    leaking_commands: list[str] = field(default_factory=list)


def _command_lines_containing(secret: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if secret.encode() in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.fixture
def git_http(served_root: Path, request: pytest.FixtureRequest) -> Iterator[HttpGit]:
    """``git http-backend`` as CGI behind a threaded HTTP server with basic auth; the password
    is HTTP_PASSWORD unless the test parametrizes the fixture indirectly with another."""
    password: str = getattr(request, "param", HTTP_PASSWORD)
    state = HttpGit(base="", username=HTTP_USER, password=password)
    expected = "Basic " + base64.b64encode(f"{HTTP_USER}:{password}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.serve()

        def do_POST(self) -> None:
            self.serve()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test output is for the tests."""

        def serve(self) -> None:
            state.requests += 1
            state.leaking_commands.extend(_command_lines_containing(password))
            body = read_body(self)
            if self.headers.get("Authorization") != expected:
                state.unauthorized += 1
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            answer_with_http_backend(self, served_root, body, remote_user=HTTP_USER)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hung_server() -> Iterator[str]:
    """``git://127.0.0.1:<port>/x``: the kernel completes the handshake, nobody ever reads."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"git://127.0.0.1:{s.getsockname()[1]}/x.git"


@pytest.fixture
def cache(tmp_path: Path) -> GitCache:
    return GitCache(tmp_path / "cache")


@pytest.fixture
def spawned() -> Iterator[list[tuple[str, ...]]]:
    """The argv of every process the adapter starts during the test."""
    recorded: list[tuple[str, ...]] = []

    def record(argv: Sequence[str]) -> None:
        recorded.append(tuple(argv))

    running.spawn_hooks.append(record)
    try:
        yield recorded
    finally:
        running.spawn_hooks.remove(record)


def git_commands(recorded: Sequence[tuple[str, ...]]) -> list[str]:
    """The git subcommand of each recorded process (after the ``-c`` and ``--`` options)."""
    names: list[str] = []
    for argv in recorded:
        if argv[0] != "git":
            continue
        words = iter(argv[1:])
        for word in words:
            if word == "-c":
                next(words)
            elif not word.startswith("-"):
                names.append(word)
                break
    return names
