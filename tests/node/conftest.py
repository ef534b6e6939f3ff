"""Helpers for the tests on the real node: kubectl against it, a fresh namespace, pod waits."""

import json
import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

import aioreconcile
from aioreconcile.testing.docker import Docker, build_product_image, start_docker
from aioreconcile.testing.images import base_image_archive
from aioreconcile.testing.node import Node
from aioreconcile.testing.toolchain import require


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The cleanup tests first: they start a node (and a test dockerd) of their own, and only one
    of each may run on a machine at a time, while the session's ``node`` and ``docker``
    fixtures, once a test has asked for them, live until the session ends."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/node/test_cleanup.py") else 1)


@dataclass(frozen=True)
class Kubectl:
    """The kubectl built at the cluster's version, with the node's admin kubeconfig."""

    node: Node

    async def __call__(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(require("kubectl")), f"--kubeconfig={self.node.kubeconfig}", *args]
        result = await anyio.run_process(
            argv, input=input.encode() if input is not None else None, check=False
        )
        completed = subprocess.CompletedProcess(
            argv, result.returncode, result.stdout.decode(), result.stderr.decode()
        )
        if check and completed.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({completed.returncode}):\n"
                f"{completed.stdout}{completed.stderr}"
            )
        return completed

    async def json(self, *args: str) -> Any:
        return json.loads((await self(*args, "-o", "json")).stdout)

    async def apply(self, namespace: str, manifest: dict[str, Any]) -> None:
        await self("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    async def wait_running(self, namespace: str, pod: str, *, within_s: float = 60) -> None:
        await self(
            "wait", "-n", namespace, f"pod/{pod}", "--for=condition=Ready", f"--timeout={within_s}s"
        )


@pytest.fixture(scope="session")
def kubectl(node: Node) -> Kubectl:
    return Kubectl(node)


@pytest.fixture
async def node_namespace(node: Node, kubectl: Kubectl) -> AsyncIterator[str]:
    """A fresh namespace, once kube-controller-manager gave it its default ServiceAccount."""
    name = f"n-{secrets.token_hex(4)}"
    await kubectl("create", "namespace", name)
    await node.wait_service_account(name)
    yield name
    await kubectl("delete", "namespace", name, "--wait=false")


def sleeping_pod(name: str, image: str, *, command: list[str] | None = None) -> dict[str, Any]:
    """A pod from a local image (never pulled) that runs ``command`` (default: sleeps)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": command or ["sleep", "infinity"],
                }
            ],
        },
    }


PRODUCT_IMAGE = "localhost/aioreconcile:test"


@pytest.fixture(scope="session")
async def docker() -> AsyncIterator[Docker]:
    """The machine's dockerd, or one started for the session (no iptables, no bridge)."""
    async with start_docker() as running:
        yield running


@pytest.fixture(scope="session")
async def product_image(node: Node, docker: Docker) -> str:
    """The top-level Dockerfile built on the local Debian base, imported into the node."""
    base = node.base_image
    assert base, "the node fixture imports the Debian base image"
    if not await docker.has_image(base):
        await docker.load(await anyio.to_thread.run_sync(base_image_archive))
    took = await build_product_image(
        docker, tag=PRODUCT_IMAGE, base_image=base, version=aioreconcile.__version__
    )
    print(f"product image built in {took:.1f} s")
    await docker.save_into(node.ctr(), PRODUCT_IMAGE)
    return PRODUCT_IMAGE
