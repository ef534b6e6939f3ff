"""``aioreconcile demo`` as a newcomer runs it: a process, real cluster, Jaeger, git and controller.

The guided tour must pass end to end, and Ctrl-C on a running demo must leave nothing behind:
no process it started (found by parentage and by the working directory in their command
lines), no temporary directory; only the user's clone stays.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.jaeger]

STEPS = (
    "1. commit: scale + reconfigure",
    "2. kubectl edit: drift healed",
    "3. broken commit: RenderFailed",
    "4. git revert: rollback",
)
_WORKDIR = re.compile(r"working files in (\S*aioreconcile-demo-\w+)")
_REMOVED = re.compile(r"removed (\S*aioreconcile-demo-\w+)")


@dataclass
class Output:
    """A child's stdout collected line by line by a thread, so a test can wait for a line."""

    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: re.Pattern[str], *, seconds: float) -> re.Match[str]:
        deadline = time.monotonic() + seconds
        with self.changed:
            while not (match := pattern.search(self.text())):
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no {pattern.pattern!r} after {seconds} s:\n{self.text()}")
                self.changed.wait(left)
            return match


def _collect(process: subprocess.Popen[str], output: Output) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        with output.changed:
            output.lines.append(line)
            output.changed.notify_all()


@pytest.fixture
def demo_env() -> dict[str, str]:
    """Our environment (HOME too: the built binaries are cached under it), 160 columns."""
    return {**os.environ, "COLUMNS": "160"}


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line of every process below ``root`` (by parent pid, through /proc)."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        commands[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = commands[pid]
                frontier.append(pid)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _commands_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.fixture
def demo(
    tmp_path: Path, demo_env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[str], Output]]:
    """``aioreconcile demo`` (interactive) in the background, killed if the test leaves it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "aioreconcile", "demo", "--dir", str(tmp_path / "clone")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=demo_env,
    )
    output = Output()
    threading.Thread(target=_collect, args=(process, output), daemon=True).start()
    try:
        yield process, output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_scripted_tour_passes_every_step_and_prints_the_summary(
    tmp_path: Path, demo_env: dict[str, str]
) -> None:
    clone = tmp_path / "clone"
    result = subprocess.run(
        [sys.executable, "-m", "aioreconcile", "demo", "--script", "--dir", str(clone)],
        capture_output=True,
        text=True,
        env=demo_env,
        timeout=600,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "aioreconcile demo --script" in out
    summary = out[out.index("aioreconcile demo --script") :]
    for step in STEPS:
        row = next((line for line in summary.splitlines() if step in line), None)
        assert row is not None, f"{step} missing from the summary:\n{summary}"
        assert " ok " in row, row
        assert re.search(r"\d+ ms", row), row
        assert re.search(r"[0-9a-f]{32}", row), f"no trace id in {row}"
    assert "RenderFailed" in out
    assert "settings.yaml" in out
    workdir = _REMOVED.search(out)
    assert workdir is not None, out
    assert not Path(workdir[1]).exists()
    assert not _commands_mentioning(workdir[1])
    assert (clone / ".git" / "hooks" / "post-commit").is_file()
    secret = clone / ".git" / "aioreconcile-demo" / "webhook-secret"
    assert secret.stat().st_mode & 0o777 == 0o600


def test_ctrl_c_stops_everything_it_started_and_removes_its_files(
    demo: tuple[subprocess.Popen[str], Output], tmp_path: Path
) -> None:
    process, output = demo
    output.wait_for(re.compile("aioreconcile demo is running"), seconds=300)
    workdir = Path(output.wait_for(_WORKDIR, seconds=10)[1])
    started = _descendants(process.pid)
    names = " ".join(started.values())
    for component in ("etcd", "kube-apiserver", "jaeger", "git-daemon", "aioreconcile run"):
        assert component in names, f"{component} not running under the demo: {started}"

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=90) == 0, output.text()

    left = {pid: command for pid, command in started.items() if _alive(pid)}
    assert not left, f"still running after Ctrl-C: {left}"
    assert not _commands_mentioning(str(workdir))
    assert not workdir.exists()
    assert (tmp_path / "clone" / "base" / "kustomization.yaml").is_file()  # the clone stays


def test_a_killed_demo_leaves_no_process_behind(
    demo: tuple[subprocess.Popen[str], Output],
) -> None:
    """SIGKILL runs no cleanup: the kernel's parent-death signal must stop every component."""
    process, output = demo
    output.wait_for(re.compile("aioreconcile demo is running"), seconds=300)
    workdir = Path(output.wait_for(_WORKDIR, seconds=10)[1])
    started = _descendants(process.pid)

    process.kill()
    process.wait(timeout=10)
    deadline = time.monotonic() + 15
    while (left := [pid for pid in started if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)

    try:
        assert not left, {pid: started[pid] for pid in left}
        assert not _commands_mentioning(str(workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # nobody was left to remove it


def test_a_second_demo_serves_the_users_commits_and_a_failed_step_is_named(
    demo: tuple[subprocess.Popen[str], Output], tmp_path: Path, demo_env: dict[str, str]
) -> None:
    process, output = demo
    output.wait_for(re.compile("aioreconcile demo is running"), seconds=300)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=90) == 0, output.text()
    clone = tmp_path / "clone"
    settings = clone / "overlays" / "demo" / "settings.yaml"
    settings.write_text(settings.read_text().replace("Hello from Git", "Hello from me"))
    subprocess.run(["git", "commit", "-qam", "My own greeting"], cwd=clone, check=True)
    mine = subprocess.run(
        ["git", "rev-parse", "--short=7", "HEAD"], cwd=clone, capture_output=True, text=True
    ).stdout.strip()

    second = subprocess.run(
        [sys.executable, "-m", "aioreconcile", "demo", "--script", "--dir", str(clone)],
        capture_output=True,
        text=True,
        env=demo_env,
        timeout=600,
        check=False,
    )

    out = second.stdout + second.stderr
    assert second.returncode == 1, out
    assert re.search(rf"commit\s+{mine} My own greeting", out), out  # served and applied
    assert "step 1 (scale and reconfigure) failed" in out
    assert re.search(r"1\. scale and reconfigure .* FAILED", out), out
