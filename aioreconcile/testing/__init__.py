"""Test a GitOps repository against a real Kubernetes API server and a real Jaeger.

The components are real binaries built from Go modules (``hack/testenv/build.sh`` or
``aioreconcile testenv build``) and started on loopback:

    async with start_control_plane() as plane:
        ...  # plane.kubeconfig works with kubectl and kubernetes_asyncio

With pytest, the fixtures ``kube``, ``namespace`` and ``jaeger`` come from the plugin that
installing aioreconcile registers (see ``aioreconcile.testing.pytest_plugin``).
"""

from aioreconcile.testing.controlplane import ControlPlane, start_control_plane
from aioreconcile.testing.jaeger import Jaeger, start_jaeger
from aioreconcile.testing.processes import StartupError
from aioreconcile.testing.toolchain import ToolchainError, ensure_built

__all__ = [
    "ControlPlane",
    "Jaeger",
    "StartupError",
    "ToolchainError",
    "ensure_built",
    "start_control_plane",
    "start_jaeger",
]
