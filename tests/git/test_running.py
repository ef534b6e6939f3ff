"""The process runner every git call goes through: deadline, process group, environment."""

import time
from pathlib import Path

import anyio
import pytest

from aioreconcile.adapters.git import GitCommandError, GitTimeoutError, run_git
from aioreconcile.adapters.git.running import run_command


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    start = time.monotonic()
    with pytest.raises(GitTimeoutError, match=r"within 0\.5 s"):
        await run_command(
            ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"],
            cwd=None,
            env={},
            time_limit=0.5,
        )
    assert time.monotonic() - start < 2
    child = int(pidfile.read_text())
    for _ in range(40):
        if not alive(child):
            break
        await anyio.sleep(0.05)
    assert not alive(child)


async def test_child_environment_is_private_and_cannot_prompt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    monkeypatch.setenv("GIT_DIR", "/somewhere/else")
    output = await run_command(
        ["env"], cwd=None, env={"HOME": str(tmp_path), "EXTRA": "1"}, time_limit=10
    )
    env = dict(line.split("=", 1) for line in output.decode().splitlines())
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["LC_ALL"] == "C"
    assert env["HOME"] == str(tmp_path)
    assert env["EXTRA"] == "1"
    assert "UNRELATED_SECRET" not in env
    assert "GIT_DIR" not in env


async def test_default_home_is_private_and_empty() -> None:
    output = await run_command(["sh", "-c", "echo $HOME"], cwd=None, env={}, time_limit=10)
    home = Path(output.decode().strip())
    assert home != Path.home()
    assert "aioreconcile-git-home" in home.name


async def test_failure_message_carries_the_redacted_stderr_tail() -> None:
    with pytest.raises(GitCommandError) as e:
        await run_command(
            ["sh", "-c", "echo 'fatal: https://bot:tok3n@host/r.git and tok3n' >&2; exit 128"],
            cwd=None,
            env={},
            time_limit=10,
            secrets=("tok3n",),
        )
    assert e.value.returncode == 128
    assert "tok3n" not in str(e.value)
    assert "https://***@host/r.git and ***" in str(e.value)


async def test_run_git_returns_standard_output() -> None:
    assert (await run_git(["--version"], cwd=None, env={}, time_limit=10)).startswith(b"git ")
