"""A build that is cancelled (Ctrl-C or SIGTERM sent to ``aioreconcile demo`` or ``testenv up``
alone, not to the terminal's whole process group) stops the builder and everything it started:
bash defers a signal until its foreground child ends, so killing bash alone leaves ``go build``
running for minutes."""

import os
import time
from pathlib import Path

import anyio
import pytest

from aioreconcile.testing import toolchain


@pytest.fixture
def slow_builder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A build.sh stand-in: says it is building, then waits on a child (as on ``go build``)."""
    pid_file = tmp_path / "child.pid"
    script = tmp_path / "build.sh"
    script.write_text(
        "echo '[testenv] etcd: building (first time on this machine; this takes minutes)...' >&2\n"
        f"sleep 300 & echo $! > {pid_file}\n"
        "wait\n"
    )
    monkeypatch.setattr(toolchain, "BUILD_SCRIPT", script)
    monkeypatch.setenv(toolchain.CACHE_ENV, str(tmp_path / "cache"))
    return pid_file


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_a_cancelled_build_leaves_no_builder_process(slow_builder: Path) -> None:
    seen: list[str] = []
    with anyio.move_on_after(30) as scope:
        async with anyio.create_task_group() as tasks:

            async def build() -> None:
                await toolchain.ensure_built(["etcd"], progress=seen.append)

            tasks.start_soon(build)
            pid_file = anyio.Path(slow_builder)
            while not await pid_file.exists() or not (await pid_file.read_text()).strip():
                await anyio.sleep(0.05)
            child = int(await pid_file.read_text())
            tasks.cancel_scope.cancel()
    assert not scope.cancelled_caught, "the builder never started"
    assert seen  # its progress line came through

    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    try:
        assert not _alive(child), "the builder's child survived the cancelled build"
    finally:
        if _alive(child):
            os.kill(child, 9)
