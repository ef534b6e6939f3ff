"""Building the product image in the tests: dockerd, a staged build context, ``docker build``.

dockerd comes from Debian's ``docker.io`` (20.10); the ``docker`` client on these machines is
newer and talks to it at API 1.41 with the legacy builder. When no dockerd answers,
:func:`start_docker` starts one with ``--iptables=false --bridge=none``: it adds no iptables
rule (Docker's FORWARD DROP policy would cut the node's pod bridge), and builds run with
``--network host`` so ``apt-get`` in a ``RUN`` reaches the Debian mirror without a NAT. Its data
root is in the testenv cache, so the base image and the build cache survive between runs.

The build context is staged, not the clone: the sources, the Dockerfile, the cached helm and
kubectl binaries under ``bin/`` and the dependency wheels under ``wheels/`` (made by the host's
pip, so the build needs no index: no registry is reachable here).
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio

from aioreconcile.testing import hoststate
from aioreconcile.testing.processes import ManagedProcess, StartupError
from aioreconcile.testing.toolchain import cache_root, require

API_VERSION: Final = "1.41"  # dockerd 20.10's API; the newer client speaks it when told
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
DOCKER_HOST_PATHS: Final = (
    Path("/run/docker"),
    Path("/etc/docker"),
    Path("/var/lib/docker"),
    Path("/run/containerd"),  # the shims of dockerd's own containerd put their sockets here
)
_SOURCES: Final = ("pyproject.toml", "README.md", "Dockerfile", ".dockerignore", "aioreconcile")


@dataclass(frozen=True)
class Docker:
    """A reachable dockerd and the environment the ``docker`` client needs for it."""

    env: Mapping[str, str]
    started: bool

    async def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        result = await anyio.run_process(["docker", *args], env=dict(self.env), check=False)
        if check and result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            tail = "\n".join(output.splitlines()[-30:])
            raise StartupError(f"docker {args[0]} failed ({result.returncode}):\n{tail}")
        return result

    async def has_image(self, reference: str) -> bool:
        return (await self.run("image", "inspect", reference, check=False)).returncode == 0

    async def load(self, archive: Path) -> None:
        await self.run("load", "--input", str(archive))

    async def build(self, context: Path, *, tag: str, build_args: Mapping[str, str] = {}) -> None:
        args = [f"--build-arg={k}={v}" for k, v in build_args.items()]
        await self.run("build", "--network=host", *args, "--tag", tag, str(context))

    async def labels(self, reference: str) -> dict[str, str]:
        out = await self.run("image", "inspect", "--format", "{{json .Config.Labels}}", reference)
        labels: dict[str, str] = json.loads(out.stdout) or {}
        return labels

    async def save_into(self, node_ctr: list[str], reference: str) -> None:
        """``docker save REF | ctr images import -``: hand a built image to a node's kubelet."""

        def pipe() -> None:
            with subprocess.Popen(
                ["docker", "save", reference], env=dict(self.env), stdout=subprocess.PIPE
            ) as save:
                imported = subprocess.run(
                    [*node_ctr, "images", "import", "-"],
                    stdin=save.stdout,
                    capture_output=True,
                    text=True,
                )
            if save.returncode != 0 or imported.returncode != 0:
                raise StartupError(
                    f"docker save {reference} | ctr images import - failed "
                    f"({save.returncode}, {imported.returncode}): {imported.stderr.strip()}"
                )

        await anyio.to_thread.run_sync(pipe)


def _client_env(host: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["DOCKER_API_VERSION"] = API_VERSION
    env["DOCKER_BUILDKIT"] = "0"  # dockerd 20.10 + this client: the legacy builder
    if host:
        env["DOCKER_HOST"] = host
    return env


async def _answers(env: Mapping[str, str]) -> bool:
    result = await anyio.run_process(
        ["docker", "version", "--format", "{{.Server.Version}}"], env=dict(env), check=False
    )
    return result.returncode == 0


@asynccontextmanager
async def start_docker(
    workdir: Path | None = None, *, timeout_s: float = 60.0
) -> AsyncIterator[Docker]:
    """Use the running dockerd, or start one (no iptables, no bridge) and stop it on exit."""
    if shutil.which("docker") is None:
        raise StartupError("no docker client on PATH (the machine image provides it)")
    existing = _client_env(None)
    if await _answers(existing):
        yield Docker(env=existing, started=False)
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise StartupError("dockerd is not installed: apt-get install -y docker.io")
    data_root = cache_root() / "docker"
    data_root.mkdir(parents=True, exist_ok=True)
    keep = workdir is not None
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="aioreconcile-docker-"))
    root.mkdir(parents=True, exist_ok=True)
    host = f"unix://{root / 'docker.sock'}"
    env = _client_env(host)
    process = ManagedProcess(
        "dockerd",
        [
            dockerd,
            f"--host={host}",
            f"--data-root={data_root}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'dockerd.pid'}",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--log-level=warn",
        ],
        log_path=root / "dockerd.log",
    )
    with (data_root.parent / "docker.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartupError(
                f"another test dockerd uses {data_root}; wait for it to stop"
            ) from None
        # Only mounts and files: a node may run meanwhile, and its iptables rules are not ours.
        snapshot = hoststate.HostSnapshot.take(DOCKER_HOST_PATHS)
        try:
            process.start()
            await process.wait_ready(lambda: _answers(env), timeout=timeout_s, what="answering")
            yield Docker(env=env, started=True)
        finally:
            await process.stop(grace=20)
            process.kill_now()
            # dockerd leaves its netns mount in the exec root, /run/docker, /etc/docker/key.json
            # and its build containers' shim sockets in /run/containerd/s.
            problems = hoststate.unmount_new(snapshot, root)
            problems += hoststate.remove_new_entries(snapshot)
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
            if problems:
                raise StartupError("dockerd's cleanup left:\n" + "\n".join(problems))


def stage_build_context(destination: Path, *, source: Path = REPO_ROOT) -> Path:
    """Copy what the Dockerfile needs into ``destination``: the sources, ``bin/helm`` and
    ``bin/kubectl`` from the testenv cache, and every dependency as a wheel in ``wheels/``."""
    destination.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in _SOURCES:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, destination / name, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(path, destination / name)
    bin_dir = destination / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("helm", "kubectl"):
        shutil.copy2(require(tool), bin_dir / tool)
    wheels = destination / "wheels"
    # The build backend too (pyproject's build-system.requires): the image builds offline.
    requirements = [str(source), "setuptools>=68", "wheel"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            *requirements,
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise StartupError(f"pip wheel {source} failed:\n{result.stderr[-3000:]}")
    return destination


def _git(source: Path, *args: str) -> str | None:
    result = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def source_labels(source: Path = REPO_ROOT) -> dict[str, str]:
    """REVISION and SOURCE build arguments: the commit and where it came from (the remote, or
    the clone's path when it has none)."""
    return {
        "REVISION": _git(source, "rev-parse", "HEAD") or "unknown",
        "SOURCE": _git(source, "remote", "get-url", "origin") or source.as_uri(),
    }


async def build_product_image(
    docker: Docker,
    *,
    tag: str,
    base_image: str,
    version: str,
    build_args: Mapping[str, str] = {},
) -> float:
    """Stage a context and ``docker build`` the top-level Dockerfile; return the seconds taken."""
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aioreconcile-image-") as scratch:
        context = await anyio.to_thread.run_sync(stage_build_context, Path(scratch) / "context")
        await docker.build(
            context,
            tag=tag,
            build_args={
                "BASE_IMAGE": base_image,
                "VERSION": version,
                **source_labels(),
                "PIP_INSTALL_OPTIONS": "--no-index",
                **build_args,
            },
        )
    return time.monotonic() - began
