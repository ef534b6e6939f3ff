"""A real Jaeger v2 on loopback: in-memory storage, OTLP receivers and the query API.

Every port is chosen free at start, so parallel runs and a developer's own Jaeger never clash.

The binary built from Jaeger's Go module has no UI (the UI is a separate npm build, jaeger-ui);
its query port answers ``/`` with a placeholder page. Given a jaeger-ui build directory
(``ui_assets``, or ``AIORECONCILE_JAEGER_UI_ASSETS``), Jaeger serves it there instead, through
its own ``extensions.jaeger_query.ui.assets_path`` setting, as the official image does with the
assets compiled in.
"""

import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aioreconcile.testing.controlplane import free_port, http_ok
from aioreconcile.testing.processes import ManagedProcess
from aioreconcile.testing.toolchain import require

UI_ASSETS_ENV = "AIORECONCILE_JAEGER_UI_ASSETS"


class UIAssetsError(Exception):
    """The UI assets directory given is not a jaeger-ui build (no ``index.html``)."""


def ui_assets_from(given: Path | None) -> Path | None:
    """The UI assets directory to serve: ``given``, else ``$AIORECONCILE_JAEGER_UI_ASSETS``.

    Checked here, before Jaeger starts: Jaeger itself panics at start-up ("Could not create
    static assets handler", a Go stack trace in its log) without naming the directory.
    """
    if given is None:
        from_env = os.environ.get(UI_ASSETS_ENV, "")
        if not from_env:
            return None
        given = Path(from_env)
    assets = given.expanduser().resolve()
    if not (assets / "index.html").is_file():
        raise UIAssetsError(
            f"{assets} has no index.html: give the jaeger-ui build output "
            f"(packages/jaeger-ui/build after `npm run build`) as {UI_ASSETS_ENV}"
        )
    return assets


@dataclass
class Jaeger:
    """A running Jaeger: where to send spans and where to query them."""

    otlp_http_endpoint: str  # base URL, e.g. http://127.0.0.1:43180 (the exporter adds /v1/traces)
    otlp_grpc_endpoint: str  # host:port
    query_url: str  # UI and HTTP query API, e.g. http://127.0.0.1:16686
    process: ManagedProcess
    workdir: Path
    timings: dict[str, float] = field(default_factory=dict)


def _config(
    *,
    otlp_grpc: int,
    otlp_http: int,
    query_http: int,
    query_grpc: int,
    health: int,
    ui_assets: Path | None = None,
    otlp_host: str = "127.0.0.1",
) -> dict[str, object]:
    def loopback(port: int) -> dict[str, str]:
        return {"endpoint": f"127.0.0.1:{port}"}

    def otlp(port: int) -> dict[str, str]:
        return {"endpoint": f"{otlp_host}:{port}"}

    query: dict[str, object] = {
        "storage": {"traces": "memstore"},
        "http": loopback(query_http),
        "grpc": loopback(query_grpc),
    }
    if ui_assets is not None:
        query["ui"] = {"assets_path": str(ui_assets)}

    return {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            # No self-metrics endpoint: it would take the fixed port 8888.
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
        },
        "extensions": {
            "healthcheckv2": {"use_v2": True, "http": loopback(health)},
            "jaeger_query": query,
            "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 100000}}}},
        },
        "receivers": {"otlp": {"protocols": {"grpc": otlp(otlp_grpc), "http": otlp(otlp_http)}}},
        "processors": {"batch": {"timeout": "200ms"}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
    }


@asynccontextmanager
async def start_jaeger(
    workdir: Path | None = None,
    *,
    startup_timeout: float = 60.0,
    ui_assets: Path | None = None,
    otlp_host: str = "127.0.0.1",
) -> AsyncIterator[Jaeger]:
    """Start Jaeger v2 (all-in-one, memory storage) on free loopback ports; stop it on exit.

    ``otlp_host``: the address its OTLP receivers bind instead of loopback (the node tests give
    the node address, so pods can export to it); the query API stays on loopback.

    ``ui_assets`` (default ``$AIORECONCILE_JAEGER_UI_ASSETS``): a jaeger-ui build to serve on
    ``query_url``; without it ``/`` is Jaeger's "not the Jaeger UI" placeholder.
    """
    assets = ui_assets_from(ui_assets)
    binary = require("jaeger")
    keep = workdir is not None
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="aioreconcile-jaeger-"))
    root.mkdir(parents=True, exist_ok=True)
    ports = {
        name: free_port()
        for name in ("otlp_grpc", "otlp_http", "query_http", "query_grpc", "health")
    }
    config_path = root / "jaeger.yaml"
    config_path.write_text(
        yaml.safe_dump(_config(**ports, ui_assets=assets, otlp_host=otlp_host), sort_keys=False)
    )
    process = ManagedProcess(
        "jaeger", [str(binary), f"--config={config_path}"], log_path=root / "jaeger.log"
    )
    jaeger = Jaeger(
        otlp_http_endpoint=f"http://{otlp_host}:{ports['otlp_http']}",
        otlp_grpc_endpoint=f"{otlp_host}:{ports['otlp_grpc']}",
        query_url=f"http://127.0.0.1:{ports['query_http']}",
        process=process,
        workdir=root,
    )
    began = time.monotonic()
    try:
        process.start()
        await process.wait_ready(
            lambda: http_ok(f"http://127.0.0.1:{ports['health']}/status"),
            timeout=startup_timeout,
            what="healthy",
        )
        await process.wait_ready(
            lambda: http_ok(f"{jaeger.query_url}/api/services"),
            timeout=startup_timeout,
            what="serving its query API",
        )
        jaeger.timings["jaeger_ready_s"] = time.monotonic() - began
        yield jaeger
    finally:
        try:
            await process.stop()
        finally:
            process.kill_now()
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
