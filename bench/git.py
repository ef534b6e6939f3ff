"""From a push to a readable commit tree, through the Git adapter against a real git daemon.

    python -m bench.git [--files 1000] [--runs 5]

A repository of ``--files`` files is served by ``git daemon`` on loopback. Each run pushes a
one-file commit, then times resolve (``ls-remote``), fetch (of the ref itself: shallow into an
empty cache, incremental after) and checkout (the tree materialised and the changed file read
back). ``cold`` starts from an empty cache every run; ``warm`` reuses one cache that already
holds the previous commit. ``webhook_s`` is what a push webhook costs (fetch of the ref +
checkout: a push skips the ``ls-remote``); ``total_s`` adds the resolve a poll needs.
"""

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from aioreconcile.adapters.git import GitCache
from aioreconcile.engine.config import GitSourceSpec
from bench.reporting import emit


def _git(*args: str, cwd: Path, home: Path) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "Bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
    }
    return subprocess.run(
        ["git", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _manifest(n: int, generation: int) -> str:
    return (
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{n:04d}\n"
        f"data:\n  generation: '{generation}'\n  payload: {'x' * 200}\n"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Upstream:
    """A bare repository with ``files`` files, a clone to push from, and git daemon."""

    def __init__(self, root: Path, files: int) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir()
        served = root / "served"
        served.mkdir()
        _git("init", "--quiet", "--bare", str(served / "app.git"), cwd=root, home=self.home)
        self.work = root / "work"
        _git("clone", "--quiet", str(served / "app.git"), str(self.work), cwd=root, home=self.home)
        for n in range(files):
            path = self.work / f"dir-{n // 50:02d}" / f"cm-{n:04d}.yaml"
            path.parent.mkdir(exist_ok=True)
            path.write_text(_manifest(n, 0))
        self.generation = 0
        self._commit()
        self.port = _free_port()
        self.daemon = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                f"--base-path={served}",
                "--export-all",
                "--listen=127.0.0.1",
                f"--port={self.port}",
                str(served),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_for_daemon()
        self.url = f"git://127.0.0.1:{self.port}/app.git"

    def push_one_change(self) -> tuple[str, str]:
        """Change one file, commit and push; the SHA and the file's new content."""
        self.generation += 1
        content = _manifest(0, self.generation)
        (self.work / "dir-00" / "cm-0000.yaml").write_text(content)
        return self._commit(), content

    def _commit(self) -> str:
        _git("add", "--all", cwd=self.work, home=self.home)
        _git("commit", "--quiet", "-m", f"gen {self.generation}", cwd=self.work, home=self.home)
        _git("push", "--quiet", "origin", "HEAD:main", cwd=self.work, home=self.home)
        return _git("rev-parse", "HEAD", cwd=self.work, home=self.home)

    def _wait_for_daemon(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("git daemon did not start")

    def close(self) -> None:
        self.daemon.terminate()
        self.daemon.wait(timeout=10)


async def _measure(cache: GitCache, upstream: Upstream, *, mode: str, run: int) -> dict[str, Any]:
    sha, content = upstream.push_one_change()
    source = cache.source(GitSourceSpec(url=upstream.url))
    start = time.perf_counter()
    resolved = await source.resolve()
    resolved_at = time.perf_counter()
    fetched = await source.fetch()  # the ref itself, as a push and a poll fetch it
    fetched_at = time.perf_counter()
    tree = await source.checkout(fetched)
    readable = await anyio.Path(tree / "dir-00" / "cm-0000.yaml").read_text()
    done = time.perf_counter()
    if resolved != sha or fetched != sha or readable != content:
        raise RuntimeError(f"run {run}: read {resolved} instead of {sha}")
    return {
        "mode": mode,
        "run": run,
        "resolve_s": resolved_at - start,
        "fetch_s": fetched_at - resolved_at,
        "checkout_s": done - fetched_at,
        "webhook_s": done - resolved_at,
        "total_s": done - start,
    }


async def main(files: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-git-") as directory:
        root = Path(directory)
        upstream = Upstream(root, files)
        try:
            rows = []
            for run in range(1, runs + 1):
                cold = GitCache(root / f"cold-{run}")
                rows.append(await _measure(cold, upstream, mode="cold", run=run))
            warm = GitCache(root / "warm")
            await _measure(warm, upstream, mode="warm", run=0)  # holds the previous commit now
            for run in range(1, runs + 1):
                rows.append(await _measure(warm, upstream, mode="warm", run=run))
        finally:
            upstream.close()
    medians = {
        mode: {
            key: statistics.median(r[key] for r in rows if r["mode"] == mode)
            for key in ("resolve_s", "fetch_s", "checkout_s", "webhook_s", "total_s")
        }
        for mode in ("cold", "warm")
    }
    emit(
        "git",
        rows,
        extra={"files": files, "runs": runs, "medians": medians, "git": _git_version()},
    )


def _git_version() -> str:
    return subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    anyio.run(main, args.files, args.runs)
