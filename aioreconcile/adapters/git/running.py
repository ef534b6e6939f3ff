"""Running git (and the few tools it needs) as a child process with a deadline and a clean,
private environment.

Every spawned process goes through :func:`run_command`, so three promises hold in one place: it
is killed (with its whole process group: remote helpers, ssh) when its time is up; it never sees
the user's git configuration, terminal or agent; and what it wrote to stderr is redacted before
it can reach an exception or a log line.
"""

import logging
import os
import signal
import subprocess
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Final

import anyio
from anyio.abc import ByteReceiveStream

from aioreconcile.engine.errors import AioreconcileError, FetchError, TransientError
from aioreconcile.engine.redaction import redact_text

logger = logging.getLogger(__name__)

_STDERR_TAIL_LINES: Final = 15
_STDERR_TAIL_CHARS: Final = 1500
# Passed through from our own environment: reaching the server may need a proxy or a CA bundle.
_INHERITED: Final = (
    "PATH",
    "TZ",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
)

SpawnHook = Callable[[Sequence[str]], None]
spawn_hooks: list[SpawnHook] = []
"""Called with the argv of every process started here, before it starts. Tests append a recorder
to prove that no credential is ever passed on a command line."""

_private_home: Path | None = None


class GitError(AioreconcileError):
    """A git command failed for a reason that is not about fetching (a local command)."""


class GitCommandError(GitError):
    """A command exited with a non-zero status; ``stderr`` is already redacted."""

    def __init__(self, message: str, *, returncode: int, stderr: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class GitTimeoutError(FetchError, TransientError):
    """A git call did not finish within its time limit and was killed. Transient: a hung
    server is worth another try later, and it never held up other repositories meanwhile."""


def stderr_tail(stderr: bytes, secrets: Collection[str] = ()) -> str:
    """The last lines of stderr, redacted: git names the cause at the end."""
    lines = redact_text(stderr.decode("utf-8", errors="replace"), secrets).strip().splitlines()
    tail = "\n".join(line.strip() for line in lines[-_STDERR_TAIL_LINES:])
    if len(tail) > _STDERR_TAIL_CHARS:
        tail = "..." + tail[-_STDERR_TAIL_CHARS:]
    return tail or "(no message on stderr)"


def base_environment(env: Mapping[str, str]) -> dict[str, str]:
    """A child environment that cannot prompt, reads no system or user configuration and
    speaks English (messages are matched and shown), plus ``env`` on top."""
    result = {name: os.environ[name] for name in _INHERITED if name in os.environ}
    home = env.get("HOME") or str(_default_home())
    result.update(
        {
            "HOME": home,
            "XDG_CONFIG_HOME": str(Path(home) / ".config"),
            "GIT_CONFIG_GLOBAL": str(Path(home) / ".gitconfig"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GCM_INTERACTIVE": "never",
            "LC_ALL": "C",
            "LANG": "C",
        }
    )
    result.update(env)
    return result


async def run_git(
    args: Sequence[str],
    *,
    cwd: Path | None,
    env: Mapping[str, str],
    time_limit: float,
    secrets: Collection[str] = (),
) -> bytes:
    """``git <args>``'s standard output; see :func:`run_command`."""
    return await run_command(
        ["git", *args], cwd=cwd, env=env, time_limit=time_limit, secrets=secrets
    )


async def run_command(
    argv: Sequence[str],
    *,
    cwd: Path | None,
    env: Mapping[str, str],
    time_limit: float,
    secrets: Collection[str] = (),
) -> bytes:
    """The command's standard output.

    Raises GitCommandError (non-zero exit, redacted stderr tail in the message),
    GitTimeoutError (killed after ``time_limit`` seconds) or GitError (could not start). The
    process runs in its own session, so a timeout or a cancellation kills the remote helper and
    ssh it started too, and no terminal is there to prompt on.
    """
    argv = list(argv)
    for hook in spawn_hooks:
        hook(tuple(argv))
    what = " ".join(argv[:2]) if argv[0] == "git" else argv[0]
    try:
        process = await anyio.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=base_environment(env),
            start_new_session=True,
        )
    except OSError as e:
        raise GitError(f"{argv[0]} could not be started: {e.strerror or e}") from e
    stdout: list[bytes] = []
    stderr: list[bytes] = []
    try:
        with anyio.fail_after(time_limit):
            async with anyio.create_task_group() as group:
                assert process.stdout is not None
                assert process.stderr is not None
                group.start_soon(_drain, process.stdout, stdout)
                group.start_soon(_drain, process.stderr, stderr)
            returncode = await process.wait()
    except TimeoutError:
        raise GitTimeoutError(
            f"{what} did not finish within {time_limit:g} s and was killed"
        ) from None
    finally:
        if process.returncode is None:
            _kill_group(process.pid)
        with anyio.CancelScope(shield=True):
            await process.aclose()
    if returncode != 0:
        tail = stderr_tail(b"".join(stderr), secrets)
        raise GitCommandError(
            f"{what} failed (exit status {returncode}): {tail}",
            returncode=returncode,
            stderr=tail,
        )
    return b"".join(stdout)


async def _drain(stream: ByteReceiveStream, into: list[bytes]) -> None:
    async for chunk in stream:
        into.append(chunk)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:  # the group leader is gone and the id was reused
        logger.debug("could not kill process group %d", pid)


def _default_home() -> Path:
    """An empty private HOME for callers that bring none, created once per process."""
    global _private_home
    if _private_home is None:
        _private_home = Path(tempfile.mkdtemp(prefix="aioreconcile-git-home-"))
    return _private_home
