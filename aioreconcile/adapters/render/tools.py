"""Finding the rendering tools and running them with a deadline, off the event loop."""

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import anyio

from aioreconcile.engine.sources import RenderError

DEFAULT_TIMEOUT_S: Final = 120.0
_STDERR_TAIL_LINES: Final = 20
_STDERR_TAIL_CHARS: Final = 2000


def find_tool(name: str, *, explicit: Path | None, env: str | None = None) -> Path | None:
    """The tool at ``explicit``, else at ``$env``, else on PATH; None when there is none.

    An explicit or configured path that is not executable is an error rather than a reason to
    fall back: it was chosen on purpose, and a different binary would render differently.
    """
    configured = explicit or (Path(os.environ[env]) if env and os.environ.get(env) else None)
    if configured is not None:
        if not os.access(configured, os.X_OK):
            where = "given" if explicit else f"set by {env}"
            raise RenderError(f"{name} ({where}) is not an executable file: {configured}")
        return configured
    found = shutil.which(name)
    return Path(found) if found else None


async def run_tool(
    argv: Sequence[str],
    *,
    tool: str,
    directory: Path,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    root: Path | None = None,
) -> str:
    """The tool's standard output; RenderError naming tool, directory and stderr otherwise.

    With ``root`` (the checkout), paths in the error, the tool's own included, are shown
    relative to it, as the user knows them from the repository, never as a directory of our
    cache. On timeout anyio kills the process, so a hung tool never outlives the render that
    started it.
    """
    shown = display(directory, root=root) if root is not None else str(directory)
    try:
        with anyio.fail_after(timeout_s):
            result = await anyio.run_process(argv, check=False, stdin=subprocess.DEVNULL)
    except TimeoutError:
        raise RenderError(
            f"{tool} did not finish rendering {shown} within {timeout_s:g} s"
        ) from None
    except OSError as e:
        raise RenderError(f"{tool} could not be started ({argv[0]}): {e.strerror or e}") from e
    if result.returncode != 0:
        complaint = stderr_tail(result.stderr)
        if root is not None:
            complaint = complaint.replace(f"{root}/", "")
        raise RenderError(
            f"{tool} failed rendering {shown} (exit status {result.returncode}): {complaint}"
        )
    try:
        return result.stdout.decode("utf-8")
    except UnicodeDecodeError:
        raise RenderError(f"{tool} wrote output that is not UTF-8 rendering {shown}") from None


def stderr_tail(stderr: bytes) -> str:
    """The end of a tool's complaint: the cause is usually on its last lines."""
    lines = stderr.decode("utf-8", errors="replace").strip().splitlines()
    tail = "\n".join(lines[-_STDERR_TAIL_LINES:])
    if len(tail) > _STDERR_TAIL_CHARS:
        tail = "..." + tail[-_STDERR_TAIL_CHARS:]
    return tail or "(no message on stderr)"


def display(path: Path, *, root: Path) -> str:
    """``path`` relative to the source's root, as a user knows it from the repository."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        return str(path)
    return relative.as_posix() if relative.parts else str(path)
