"""``aioreconcile testenv``: a real control plane (and Jaeger, and a node) for a person at a
terminal."""

import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TextIO

import anyio

from aioreconcile.testing.controlplane import start_control_plane
from aioreconcile.testing.jaeger import start_jaeger
from aioreconcile.testing.node import start_node
from aioreconcile.testing.toolchain import COMPONENTS, NODE_COMPONENTS, ensure_built


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def build(components: list[str]) -> None:
    await ensure_built(components or COMPONENTS, progress=_progress)


async def up(
    *,
    with_jaeger: bool,
    workdir: Path | None,
    with_node: bool = False,
    out: TextIO = sys.stdout,
) -> None:
    """Build what is missing, start everything, print the exports, wait for Ctrl-C/SIGTERM."""
    needed = ["etcd", "kube-apiserver"] + (["jaeger"] if with_jaeger else [])
    needed += list(NODE_COMPONENTS) if with_node else []
    await ensure_built(needed, progress=_progress)
    async with AsyncExitStack() as stack:
        # Signals are received from the start, so Ctrl-C during start-up still cleans up.
        signals = stack.enter_context(anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM))
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tasks:

                async def cancel_on_signal() -> None:
                    async for received in signals:
                        _progress(f"# {signal.Signals(received).name}: stopping")
                        scope.cancel()
                        return

                tasks.start_soon(cancel_on_signal)
                if with_node:
                    node = await stack.enter_async_context(
                        start_node(workdir / "node" if workdir else None)
                    )
                    plane = node.control_plane
                    _progress(
                        f"# node {node.name} Ready {node.timings['node_ready_s']:.1f} s after "
                        f"kubelet started ({node.timings['total_s']:.1f} s in all); pods can "
                        f"run {node.base_image} with imagePullPolicy: Never"
                    )
                else:
                    plane = await stack.enter_async_context(
                        start_control_plane(workdir / "cluster" if workdir else None)
                    )
                print(f"export KUBECONFIG={plane.kubeconfig}", file=out, flush=True)
                if with_jaeger:
                    jaeger = await stack.enter_async_context(
                        start_jaeger(workdir / "jaeger" if workdir else None)
                    )
                    print(
                        f"export OTEL_EXPORTER_OTLP_ENDPOINT={jaeger.otlp_http_endpoint}",
                        file=out,
                        flush=True,
                    )
                    print(f"export JAEGER_URL={jaeger.query_url}", file=out, flush=True)
                _progress(
                    f"# control plane ready in {plane.timings['control_plane_ready_s']:.1f} s "
                    f"at {plane.server} (logs in {plane.workdir}); Ctrl-C to stop"
                )
                await anyio.sleep_forever()
