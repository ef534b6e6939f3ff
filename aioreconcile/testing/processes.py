"""Child processes that never outlive the test run.

Each component runs in its own session (so a terminal's Ctrl-C reaches only us, and we stop it
in order), with its output in a log file whose tail explains a failed start. On Linux the child
is started through ``setpriv --pdeathsig SIGKILL``: if this Python process dies without cleaning
up (SIGKILL, a crashed interpreter), the kernel kills the component too, so nothing is orphaned.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import anyio

_SETPRIV = shutil.which("setpriv")


class StartupError(Exception):
    """A component did not become ready; the message carries the tail of its log."""


class ManagedProcess:
    """One long-running component: start, wait until ready, stop (TERM, then KILL)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None  # None: inherit ours
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> None:
        if self.running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        prefix = [_SETPRIV, "--pdeathsig", "SIGKILL", "--"] if _SETPRIV else []
        with self.log_path.open("ab") as log:
            log.write(f"--- starting {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                [*prefix, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def wait_ready(
        self, is_ready: Callable[[], Awaitable[bool]], *, timeout: float, what: str
    ) -> float:
        """Poll ``is_ready`` until true; return the seconds it took. Fail fast if we exit."""
        started = time.monotonic()
        while True:
            if not self.running():
                code = self._popen.returncode if self._popen else None
                raise StartupError(
                    f"{self.name} exited with code {code} before {what}; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if await is_ready():
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise StartupError(
                    f"{self.name} was not {what} after {timeout:.0f} s; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            await anyio.sleep(0.05)

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after ``grace`` seconds."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return
        with anyio.CancelScope(shield=True):
            self._signal_group(popen, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while popen.poll() is None and time.monotonic() < deadline:
                await anyio.sleep(0.05)
            if popen.poll() is None:
                self._signal_group(popen, signal.SIGKILL)
                while popen.poll() is None:
                    await anyio.sleep(0.02)

    def kill_now(self) -> None:
        """Synchronous last resort (atexit, signal handlers): SIGKILL the group and reap it."""
        popen = self._popen
        if popen is not None and popen.poll() is None:
            self._signal_group(popen, signal.SIGKILL)
            popen.wait()

    def kill9(self) -> None:
        """A crash: SIGKILL the whole process group at once (no drain, no cleanup), and reap it.
        ``start()`` brings it back with the same argv (same ports, same data directory)."""
        self.kill_now()

    def pause(self) -> None:
        """Freeze the process group (SIGSTOP): its sockets stay open and nothing answers, as a
        process stuck in a long GC pause, a frozen VM or a disk that hangs every write."""
        if self._popen is not None and self._popen.poll() is None:
            self._signal_group(self._popen, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused process group run again (SIGCONT)."""
        if self._popen is not None and self._popen.poll() is None:
            self._signal_group(self._popen, signal.SIGCONT)

    @staticmethod
    def _signal_group(popen: "subprocess.Popen[bytes]", sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, sig)


def git_daemon(served: Path, *, port: int, log_path: Path) -> ManagedProcess:
    """``git daemon`` serving every repository under ``served`` on ``git://127.0.0.1:<port>/``,
    made, not started: a Git server a test can kill, freeze and start again on the same port."""
    return ManagedProcess(
        "git-daemon",
        [
            "git",
            "daemon",
            "--reuseaddr",
            f"--base-path={served}",
            "--export-all",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(served),
        ],
        log_path=log_path,
    )
