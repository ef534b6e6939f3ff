"""pytest fixtures backed by the real control plane and Jaeger (registered as a pytest11 plugin).

- ``kube`` (session): a running etcd + kube-apiserver, its kubeconfig and a ready
  kubernetes_asyncio ``ApiClient``;
- ``namespace`` (function): a fresh, uniquely named Namespace in that cluster;
- ``jaeger`` (session): a running Jaeger with its OTLP endpoint and query URL;
- ``node`` (session): a control plane with a real node (containerd, kubelet, kube-proxy,
  kube-scheduler, kube-controller-manager) that runs pods; root only, one per machine. Tests
  that use it carry the ``node`` marker and are deselected unless ``-m node`` is given.

The fixtures are async and session-scoped, so the event loop must be too. anyio's own
``anyio_backend`` fixture is module-scoped and a plugin cannot override it; put this in your
``conftest.py``::

    @pytest.fixture(scope="session")
    def anyio_backend() -> str:
        return "asyncio"

A component that is not built fails the fixture with the command that builds it; it never skips.
"""

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from aioreconcile.adapters.kube.connecting import connect
from aioreconcile.testing.controlplane import ControlPlane, start_control_plane
from aioreconcile.testing.jaeger import Jaeger, start_jaeger
from aioreconcile.testing.node import Node, NodeError, start_node
from aioreconcile.testing.toolchain import NODE_COMPONENTS, ToolchainError, missing


@dataclass(frozen=True)
class Kube:
    """The session's cluster: ``kubeconfig`` for subprocesses, ``api`` for in-process calls."""

    kubeconfig: Path
    api: Any  # kubernetes_asyncio.client.ApiClient
    control_plane: ControlPlane


def _require_built(*components: str) -> None:
    absent = missing(components)
    if absent:
        group = " node" if set(absent) & set(NODE_COMPONENTS) else ""
        pytest.fail(
            f"{', '.join(absent)} not built: run `bash hack/testenv/build.sh{group}` once on this "
            "machine (it caches the binaries outside the clone)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
async def kube() -> AsyncIterator[Kube]:
    _require_built("etcd", "kube-apiserver")
    try:
        async with start_control_plane() as plane:
            api = await connect(plane.kubeconfig)
            try:
                yield Kube(kubeconfig=plane.kubeconfig, api=api, control_plane=plane)
            finally:
                await api.close()
    except ToolchainError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
async def namespace(kube: Kube) -> AsyncIterator[str]:
    """A new Namespace per test. Without a namespace controller a deleted one stays Terminating,
    so names are random and never reused."""
    name = f"t-{secrets.token_hex(4)}"
    core = client.CoreV1Api(kube.api)
    await core.create_namespace({"metadata": {"name": name}})
    yield name
    await core.delete_namespace(name)


@pytest.fixture(scope="session")
async def jaeger() -> AsyncIterator[Jaeger]:
    _require_built("jaeger")
    async with start_jaeger() as running:
        yield running


@pytest.fixture(scope="session")
async def node() -> AsyncIterator[Node]:
    _require_built("etcd", "kube-apiserver", *NODE_COMPONENTS)
    try:
        async with start_node() as running:
            yield running
    except (ToolchainError, NodeError) as e:
        pytest.fail(str(e), pytrace=False)
