"""Where the real test components live, and building them when they are missing.

The binaries are built from Go modules by ``toolchain/build.sh`` into a cache outside any clone,
keyed by the versions pinned in ``toolchain/versions.env``; this module reads the same pins so
Python and the script always agree on the paths.
"""

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Final

import anyio
import anyio.abc

TOOLCHAIN_DIR: Final = Path(__file__).parent / "toolchain"
BUILD_SCRIPT: Final = TOOLCHAIN_DIR / "build.sh"
COMPONENTS: Final = ("etcd", "kube-apiserver", "helm", "jaeger")
# ``build.sh node``: what a real node needs (and kubectl, which goes into the product image).
NODE_COMPONENTS: Final = (
    "pause",
    "cni-plugins",
    "kubelet",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubectl",
)
CNI_PLUGINS: Final = ("bridge", "loopback", "host-local", "portmap")
_VERSION_KEY: Final = {
    "kube-apiserver": "KUBE_VERSION",
    "etcd": "ETCD_VERSION",
    "jaeger": "JAEGER_VERSION",
    "helm": "HELM_VERSION",
    "kubelet": "KUBE_VERSION",
    "kube-controller-manager": "KUBE_VERSION",
    "kube-scheduler": "KUBE_VERSION",
    "kube-proxy": "KUBE_VERSION",
    "kubectl": "KUBE_VERSION",
    "cni-plugins": "CNI_PLUGINS_VERSION",
    "pause": "PAUSE_VERSION",
}
CACHE_ENV: Final = "AIORECONCILE_TESTENV_CACHE"


class ToolchainError(Exception):
    """A component is missing or could not be built; the message says what to run."""


def pinned_versions() -> dict[str, str]:
    """Return component -> version, as pinned in versions.env."""
    pins: dict[str, str] = {}
    for line in (TOOLCHAIN_DIR / "versions.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            pins[key.strip()] = value.strip()
    return {component: pins[key] for component, key in _VERSION_KEY.items()}


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "aioreconcile" / "testenv"


def binary_path(component: str) -> Path:
    """Where ``component`` is (or will be) cached: <cache>/<component>-<version>/bin/<component>.

    For ``cni-plugins`` that is the ``bridge`` plugin; its siblings are in the same directory.
    """
    if component not in _VERSION_KEY:
        known = ", ".join((*COMPONENTS, *NODE_COMPONENTS))
        raise ToolchainError(f"unknown component {component!r}; known: {known}")
    version = pinned_versions()[component]
    name = CNI_PLUGINS[0] if component == "cni-plugins" else component
    return cache_root() / f"{component}-{version}" / "bin" / name


def _executables(component: str) -> list[Path]:
    path = binary_path(component)
    if component == "cni-plugins":
        return [path.parent / plugin for plugin in CNI_PLUGINS]
    return [path]


def missing(components: Iterable[str] = COMPONENTS) -> list[str]:
    return [c for c in components if not all(os.access(p, os.X_OK) for p in _executables(c))]


def require(component: str) -> Path:
    """Return the cached binary, or fail with the command that builds it."""
    path = binary_path(component)
    if missing([component]):
        group = "node" if component in NODE_COMPONENTS else component
        raise ToolchainError(
            f"{component} is not built ({path} is missing). Build it once per machine with "
            f"`bash hack/testenv/build.sh {group}` or `aioreconcile testenv build {component}`."
        )
    return path


async def ensure_built(
    components: Iterable[str] = COMPONENTS, *, progress: Callable[[str], object] = print
) -> dict[str, Path]:
    """Build whatever of ``components`` is missing, reporting the builder's progress lines."""
    wanted = list(components)
    todo = missing(wanted)
    if todo:
        lines: list[str] = []
        async with await anyio.open_process(
            ["bash", str(BUILD_SCRIPT), *todo],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        ) as process:
            assert process.stderr is not None
            try:
                async for line in _lines(process.stderr):
                    lines.append(line)
                    progress(line)
                code = await process.wait()
            except BaseException:
                # Cancelled (Ctrl-C, SIGTERM): bash would only act once its foreground child
                # (a go build of minutes) ends, so the builder's whole session goes now.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                raise
        if code != 0:
            raise ToolchainError("\n".join(lines[-40:]) or f"build.sh exited with {code}")
    return {c: require(c) for c in wanted}


async def _lines(stream: anyio.abc.ByteReceiveStream) -> AsyncIterator[str]:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            yield raw.decode(errors="replace")
    if buffer:
        yield buffer.decode(errors="replace")
