"""A real Kubernetes control plane on loopback: etcd + kube-apiserver, built from Go modules.

``start_control_plane()`` is an async context manager: it writes a throwaway PKI, starts etcd and
kube-apiserver on free loopback ports under a temporary directory, waits for ``/readyz``, writes an
admin kubeconfig, and on exit stops both processes and removes the directory. There is no
controller-manager or scheduler: objects are stored and served exactly as a real cluster would,
but nothing reconciles them (Deployments get no Pods, deleted Namespaces stay Terminating).

With ``node_address`` the apiserver is set up for a real node (``aioreconcile.testing.node``
starts one on top): pods must reach it, so it listens on every address and advertises
``node_address`` (the ``kubernetes`` Service's endpoint), admits Pods with their ServiceAccount,
and reaches the kubelet with a client certificate for logs/exec.
"""

import base64
import shutil
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import yaml

from aioreconcile.testing.certificates import ADMIN_USER, Pki, write_pki
from aioreconcile.testing.processes import ManagedProcess
from aioreconcile.testing.toolchain import require

CONTEXT_NAME = "aioreconcile-testenv"


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _http_status(url: str, context: ssl.SSLContext | None) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


async def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    """True when ``url`` answers 200; connection errors are just 'not yet'."""
    return await anyio.to_thread.run_sync(_http_status, url, context) == 200


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver pair and the admin kubeconfig that reaches it."""

    workdir: Path
    pki: Pki
    kubeconfig: Path
    server: str
    etcd_url: str
    etcd: ManagedProcess
    apiserver: ManagedProcess
    startup_timeout: float
    timings: dict[str, float] = field(default_factory=dict)

    def ssl_context(self) -> ssl.SSLContext:
        """TLS context that trusts our CA and presents the admin client certificate."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    async def start_apiserver(self) -> float:
        """Start kube-apiserver (again) on the same port; return seconds until /readyz."""
        self.apiserver.start()
        context = self.ssl_context()
        took = await self.apiserver.wait_ready(
            lambda: http_ok(f"{self.server}/readyz", context),
            timeout=self.startup_timeout,
            what="ready (/readyz)",
        )
        self.timings["apiserver_ready_s"] = took
        return took

    async def stop_apiserver(self) -> None:
        await self.apiserver.stop()

    async def restart_apiserver(self) -> float:
        """Stop and start kube-apiserver; clients see a real outage and must reconnect."""
        await self.stop_apiserver()
        return await self.start_apiserver()

    async def stop(self) -> None:
        await self.apiserver.stop()
        await self.etcd.stop()

    def kill_now(self) -> None:
        self.apiserver.kill_now()
        self.etcd.kill_now()


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, *, server: str, pki: Pki) -> Path:
    """Write a kubeconfig with the credentials embedded, so it works from any directory."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CONTEXT_NAME,
                "cluster": {"server": server, "certificate-authority-data": _b64(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": ADMIN_USER,
                "user": {
                    "client-certificate-data": _b64(pki.admin_cert),
                    "client-key-data": _b64(pki.admin_key),
                },
            }
        ],
        "contexts": [
            {"name": CONTEXT_NAME, "context": {"cluster": CONTEXT_NAME, "user": ADMIN_USER}}
        ],
        "current-context": CONTEXT_NAME,
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    path.chmod(0o600)
    return path


def _etcd_argv(
    binary: Path, data_dir: Path, client_port: int, peer_port: int, extra: Sequence[str] = ()
) -> list[str]:
    client = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    return [
        str(binary),
        "--name=testenv",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=testenv={peer}",
        # A throwaway store: durability buys nothing here and fsync costs every write.
        "--unsafe-no-fsync",
        "--log-level=warn",
        *extra,
    ]


def _node_argv(pki: Pki, node_address: str | None) -> list[str]:
    if node_address is None:
        return [
            # No controller-manager creates default ServiceAccounts, so Pods could never be
            # admitted.
            "--disable-admission-plugins=ServiceAccount",
            # Endpoints may not point at loopback, and nothing here needs the kubernetes
            # Service's.
            "--endpoint-reconciler-type=none",
        ]
    return [
        # Pods reach the apiserver through the kubernetes Service (10.96.0.1:443), which
        # kube-proxy sends to this address; the lease reconciler keeps that endpoint current.
        "--endpoint-reconciler-type=lease",
        f"--kubelet-client-certificate={pki.kubelet_client_cert}",
        f"--kubelet-client-key={pki.kubelet_client_key}",
        # The node's host name resolves to 127.0.0.1 here; its InternalIP is the real address.
        "--kubelet-preferred-address-types=InternalIP",
    ]


def _apiserver_argv(
    binary: Path,
    workdir: Path,
    pki: Pki,
    *,
    etcd_url: str,
    port: int,
    extra: Sequence[str],
    node_address: str | None = None,
) -> list[str]:
    return [
        str(binary),
        f"--etcd-servers={etcd_url}",
        f"--bind-address={'0.0.0.0' if node_address else '127.0.0.1'}",
        f"--advertise-address={node_address or '127.0.0.1'}",
        f"--secure-port={port}",
        f"--cert-dir={workdir / 'apiserver-certs'}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        f"--service-account-key-file={pki.service_account_public_key}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--authorization-mode=RBAC",
        "--service-cluster-ip-range=10.96.0.0/12",  # room for benchmarks with thousands of Services
        "--allow-privileged=true",
        *_node_argv(pki, node_address),
        "--profiling=false",
        # Without it an open watch holds a graceful stop for the whole 10 s grace; with it a
        # restart in a test is a one-second outage, and watchers see their stream end.
        "--shutdown-watch-termination-grace-period=1s",
        *extra,
    ]


@asynccontextmanager
async def start_control_plane(
    workdir: Path | None = None,
    *,
    startup_timeout: float = 90.0,
    apiserver_args: Sequence[str] = (),
    etcd_args: Sequence[str] = (),
    node_address: str | None = None,
) -> AsyncIterator[ControlPlane]:
    """Start etcd + kube-apiserver on loopback; stop them and clean up on exit.

    With ``workdir`` the files (logs, kubeconfig, etcd data) are kept there after exit; without,
    a temporary directory is used and removed. ``node_address``: see the module docstring.
    ``apiserver_args`` and ``etcd_args`` are appended to their command lines (bench.scale raises
    etcd's ``--quota-backend-bytes`` for 100,000 objects; the defaults suit the tests).
    """
    etcd_binary = require("etcd")
    apiserver_binary = require("kube-apiserver")
    keep = workdir is not None
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="aioreconcile-testenv-"))
    root.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    pki = write_pki(root / "pki", serving_addresses=[node_address] if node_address else [])
    etcd_port, etcd_peer_port, apiserver_port = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    server = f"https://127.0.0.1:{apiserver_port}"
    plane = ControlPlane(
        workdir=root,
        pki=pki,
        kubeconfig=write_kubeconfig(root / "kubeconfig", server=server, pki=pki),
        server=server,
        etcd_url=etcd_url,
        etcd=ManagedProcess(
            "etcd",
            _etcd_argv(etcd_binary, root / "etcd-data", etcd_port, etcd_peer_port, etcd_args),
            log_path=root / "etcd.log",
        ),
        apiserver=ManagedProcess(
            "kube-apiserver",
            _apiserver_argv(
                apiserver_binary,
                root,
                pki,
                etcd_url=etcd_url,
                port=apiserver_port,
                extra=apiserver_args,
                node_address=node_address,
            ),
            log_path=root / "kube-apiserver.log",
        ),
        startup_timeout=startup_timeout,
    )
    try:
        plane.etcd.start()
        plane.timings["etcd_ready_s"] = await plane.etcd.wait_ready(
            lambda: http_ok(f"{etcd_url}/health"), timeout=startup_timeout, what="healthy (/health)"
        )
        await plane.start_apiserver()
        plane.timings["control_plane_ready_s"] = time.monotonic() - began
        yield plane
    finally:
        try:
            await plane.stop()
        finally:
            plane.kill_now()
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
